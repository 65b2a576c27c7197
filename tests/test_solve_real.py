"""`mathcoder solve` end to end with the real default model on the CPU (slow: a real generation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.trace import Trace

MATHCODER = str(Path(sys.executable).parent / "mathcoder")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("preset", ["tir", "mathcoder"])
def test_solve_with_the_default_model_returns_a_complete_trace(preset: str) -> None:
    proc = subprocess.run(
        [MATHCODER, "solve", "What is 17 + 25?", "--json", "--max-tokens", "96", "--format", preset],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trace = Trace.model_validate_json(proc.stdout)
    meta = trace.metadata
    assert trace.problem == "What is 17 + 25?"
    assert meta.format == ("markdown" if preset == "tir" else "mathcoder")
    assert 0 < meta.usage.completion_tokens <= 96
    assert meta.stop_reason in {
        "eos",
        "answer",
        "max_tokens",
        "max_rounds",
        "repeated_cell",
        "repeated_error",
    }
    assert meta.timings["generate_s"] > 0
    assert trace.blocks, "the model wrote nothing"
    assert json.loads(proc.stdout)["schema_version"] == 1


def test_solve_streams_prose_and_the_answer_to_the_terminal() -> None:
    proc = subprocess.run(
        [MATHCODER, "solve", "What is 6 times 7?", "--max-tokens", "96"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "answer:" in proc.stdout
