"""Benchmark settings: where the data lives, and how grading is bounded (``runtime.settings.GradingSettings``).

Deployment knobs only, read from ``MATHCODER_BENCH_*`` environment variables
(e.g. ``MATHCODER_BENCH_DATA_DIR=/data/math``, ``MATHCODER_BENCH_GRADING_TIMEOUT_S=10``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from runtime.settings import GradingSettings

__all__ = ["REPO_ROOT", "BenchmarkSettings"]

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout (or installed tree) this package lives in: a relative ``data_dir`` is taken against it."""


class BenchmarkSettings(GradingSettings):
    """Settings for benchmark data and (inherited) answer grading (env prefix ``MATHCODER_BENCH_``)."""

    data_dir: Path = Field(
        default=Path("../shared/data"),
        description=(
            "Folder of benchmark JSONL files laid out as <name>/<split>.jsonl. A relative path is resolved "
            "against the repository root (see resolve_data_dir), not the current directory."
        ),
    )

    infra_retries: int = Field(
        default=2,
        ge=0,
        description="Times a trajectory that ended on a backend or sandbox failure is run again (then it "
        "is recorded as an infrastructure failure: not graded, run again on resume).",
    )
    retry_backoff_s: float = Field(
        default=2.0, ge=0, description="Seconds before the first retry; doubled before each next one."
    )

    def resolve_data_dir(self, root: Path = REPO_ROOT) -> Path:
        """``data_dir`` as an absolute path, a relative one taken against ``root`` (the repository root)."""
        path = self.data_dir.expanduser()
        return (path if path.is_absolute() else root / path).resolve()
