"""benchmarks.answer_policies: the value each rule picks from a trajectory's outputs, graded against the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.answer_policies import main, printed_values, score_run
from benchmarks.records import ProblemRecord, RunConfig, SampleRecord
from runtime.trace import CodeBlock, OutputBlock, TextBlock, Trace


def _trajectory(outputs: list[tuple[str, str]]) -> Trace:
    blocks: list[TextBlock | CodeBlock | OutputBlock] = [TextBlock(text="Let me compute.")]
    for output, status in outputs:
        blocks += [CodeBlock(code="print(x)"), OutputBlock(output=output, status=status)]
    return Trace(problem="q", blocks=blocks, final_answer=None)


def _run(folder: Path, problems: list[tuple[str, bool, list[tuple[str, str]] | None]]) -> Path:
    """A bench folder: per problem its reference, whether the model's answer was right, its cells' outputs."""
    folder.mkdir()
    (folder / "config.json").write_text(RunConfig(dataset="mawps", split="test").model_dump_json())
    lines = []
    for i, (reference, right, outputs) in enumerate(problems):
        trace = None if outputs is None else _trajectory(outputs)
        sample = SampleRecord(answer=reference if right else "0", correct=right, trace=trace)
        record = ProblemRecord(
            id=f"mawps-test-{i}",
            dataset="mawps",
            split="test",
            question="q",
            reference=reference,
            answer=sample.answer,
            correct=right,
            pass_at_k=right,
            samples=[sample],
            wall_time_s=1.0,
        )
        lines.append(record.model_dump_json())
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_each_cell_gives_the_last_number_it_printed_and_failed_cells_none() -> None:
    trace = _trajectory(
        [("total = 1,250 apples\n", "ok"), ("no number", "ok"), ("7", "error"), ("x: 2.5e3 3/4", "ok")]
    )
    assert printed_values(trace) == ["1250", "3/4"]


def test_each_rule_is_graded_against_the_reference(tmp_path: Path) -> None:
    run = _run(
        tmp_path / "run",
        [
            # Right first, then overwritten: first and modal (43 twice) right, last wrong.
            ("43", False, [("43", "ok"), ("97", "ok"), ("43", "ok"), ("97.5", "ok")]),
            # Only the last output is right; a tie between 5 and 6 goes to the earlier, 5.
            ("6", True, [("5", "ok"), ("6", "ok")]),
            # The right value printed by a cell that raised does not count.
            ("8", False, [("8", "error"), ("9", "ok")]),
            # No cell ran: every rule is wrong; the model's own answer was right.
            ("3", True, None),
        ],
    )
    scores = score_run(run)
    assert (scores.dataset, scores.problems) == ("mawps", 4)
    assert scores.right == {"model": 2, "first": 1, "last": 1, "modal": 1, "any": 2}


def test_the_command_prints_a_table_and_writes_the_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(
        tmp_path / "calc-mawps", [("10", False, [("10", "ok"), ("11", "ok")]), ("4", False, [("5", "ok")])]
    )
    out = tmp_path / "policies.json"
    main([str(run), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["summary"][str(run)] == {"model": 0.0, "first": 0.5, "last": 0.0, "modal": 0.5, "any": 0.5}
    assert "calc-mawps" in capsys.readouterr().out
