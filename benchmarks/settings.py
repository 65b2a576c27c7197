"""Benchmark settings: where the data lives and how grading is bounded.

Deployment knobs only, read from ``MATHCODER_BENCH_*`` environment variables
(e.g. ``MATHCODER_BENCH_DATA_DIR=/data/math``, ``MATHCODER_BENCH_GRADING_TIMEOUT_S=10``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BenchmarkSettings"]


class BenchmarkSettings(BaseSettings):
    """Settings for benchmark data and answer grading (env prefix ``MATHCODER_BENCH_``)."""

    model_config = SettingsConfigDict(env_prefix="MATHCODER_BENCH_", extra="forbid")

    data_dir: Path = Field(
        default=Path("../shared/data"),
        description=(
            "Folder of benchmark JSONL files laid out as <name>/<split>.jsonl. A relative path is resolved "
            "against the repository root (see resolve_data_dir), not the current directory."
        ),
    )
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

    def resolve_data_dir(self, root: Path) -> Path:
        """``data_dir`` as an absolute path, a relative one taken against ``root`` (the repository root)."""
        path = self.data_dir.expanduser()
        return (path if path.is_absolute() else root / path).resolve()
