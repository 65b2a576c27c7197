"""Fixtures shared by the test modules: the benchmark data folder and its JSONL files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.settings import BenchmarkSettings

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = BenchmarkSettings().resolve_data_dir(REPO_ROOT)
    if not (path / "math" / "test.jsonl").is_file():
        pytest.fail(f"benchmark data not found under {path}; set MATHCODER_BENCH_DATA_DIR to the data folder")
    return path


@pytest.fixture(scope="session")
def load_rows(data_dir: Path) -> Callable[[str, str], list[dict[str, Any]]]:
    """``load_rows("gsm8k", "test")``: the rows of ``<data_dir>/gsm8k/test.jsonl``."""

    def load(name: str, split: str) -> list[dict[str, Any]]:
        with (data_dir / name / f"{split}.jsonl").open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]

    return load
