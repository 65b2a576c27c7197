"""Fixtures shared by the test modules: the benchmark data folder and its JSONL files, and the
default model as a teacher for the data-generation modes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from support.paths import REPO_ROOT

from benchmarks.datasets import load_jsonl
from benchmarks.records import Problem
from benchmarks.settings import BenchmarkSettings

if TYPE_CHECKING:
    from runtime.backends.base import Backend


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


@pytest.fixture
def gsm8k_seeds(data_dir: Path) -> list[Problem]:
    """The first GSM8K train problem, with its reference solution."""
    return load_jsonl(
        data_dir / "gsm8k" / "train.jsonl", dataset="gsm8k", split="train", id_field="id", limit=1
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def teacher() -> AsyncIterator[Backend]:
    """The default model on CPU, for the modes that need a teacher (loaded only when a slow test
    asks for it; once per module, as its batcher belongs to the module's event loop)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from runtime.backends.transformers_backend import TransformersBackend
    from runtime.settings import RuntimeSettings

    backend = TransformersBackend.load(None, RuntimeSettings(), device="cpu")
    yield backend
    await backend.aclose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip, saying so, where no CUDA device answers (torch is imported only
    when such a test was collected)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if not available:
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (marker gpu)"))
