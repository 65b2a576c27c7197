"""`mathcoder solve` end to end with the real default model on the CPU (slow: a real generation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.trace import TextBlock, Trace

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
    """The terminal shows the trace's own prose and final answer (greedy, so the --json run of the
    same question writes the same trace); "answer:" alone is printed even when there is none."""
    question = ["What is 6 times 7?", "--max-tokens", "96"]
    as_json = subprocess.run(
        [MATHCODER, "solve", *question, "--json"], capture_output=True, text=True, timeout=600
    )
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    trace = Trace.model_validate_json(as_json.stdout)
    proc = subprocess.run([MATHCODER, "solve", *question], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert f"answer: {trace.final_answer}  ({trace.metadata.stop_reason})" in lines
    shown = " ".join(proc.stdout.split())
    for block in trace.blocks:
        if isinstance(block, TextBlock) and block.text.strip():
            assert " ".join(block.text.split()) in shown  # the prose, streamed as the model wrote it


# Not in GSM8K (train or test) nor in the adapter's training data: the shipped default model must
# reach for the interpreter on problems it has not seen, not only recall its training traces.
UNSEEN = [
    "A bakery packs muffins in boxes of 6. Priya buys 7 boxes and gives 15 muffins to her neighbours. "
    "How many muffins does she have left?",
    "A cyclist rides 18 km every weekday and 35 km on each day of the weekend. How many kilometres "
    "does she ride in 3 weeks?",
    "A garden has 12 rows of 15 tulips. A third of the tulips are red and the rest are yellow. "
    "How many yellow tulips are there?",
]


@pytest.mark.parametrize("question", UNSEEN, ids=["muffins", "cyclist", "tulips"])
def test_the_shipped_default_writes_and_runs_a_cell_on_unseen_questions(question: str) -> None:
    proc = subprocess.run(
        [MATHCODER, "solve", question, "--json", "--max-tokens", "400"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trace = Trace.model_validate_json(proc.stdout)
    assert trace.metadata.usage.cells >= 1, [b.kind for b in trace.blocks]
