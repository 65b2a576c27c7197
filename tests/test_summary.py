"""The run report: its numbers agree with the records, recomputed here from the raw JSONL."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.records import ProblemRecord, RunConfig, SampleRecord
from benchmarks.summary import RunFolderError, answer_in_output, build_report, load_run, write_report
from runtime.grading import grade_jsonl, is_equivalent
from runtime.trace import CellProvenance, CodeBlock, OutputBlock, TextBlock, Trace, TraceMetadata, Usage


def make_trace(
    question: str, answer: str | None, cells: list[tuple[str, str, str]], stop: str = "answer"
) -> Trace:
    """A trace with one text block and then ``(code, output, status)`` cells."""
    blocks: list[Any] = [TextBlock(text="Let me compute.")]
    provenance = []
    for i, (code, output, status) in enumerate(cells):
        blocks += [CodeBlock(code=code), OutputBlock(output=output, status=status)]
        provenance.append(
            CellProvenance(
                index=i, status=status, wall_time_s=0.01, output_chars=len(output), truncated=False
            )
        )
    if answer is not None and cells:
        blocks.append(TextBlock(text=f"The answer is \\boxed{{{answer}}}."))
    return Trace(
        problem=question,
        blocks=blocks,
        final_answer=answer,
        metadata=TraceMetadata(
            usage=Usage(
                prompt_tokens=100 + 10 * len(cells), completion_tokens=50 + 5 * len(cells), cells=len(cells)
            ),
            stop_reason=stop,
            cells=provenance,
        ),
    )


def write_run(run_dir: Path, config: RunConfig, records: list[ProblemRecord]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    with (run_dir / "records.jsonl").open("w") as out:
        for record in records:
            out.write(record.model_dump_json() + "\n")
    return run_dir


STATUSES = ["ok", "ok", "error", "ok", "timeout", "ok", "killed", "crashed"]


def math_records(k: int) -> list[ProblemRecord]:
    """24 MATH-like problems with levels, subjects, varied cells and statuses, k samples each."""
    records = []
    subjects = ["Algebra", "Geometry", "Number Theory"]
    for i in range(24):
        ref = str(i + 2)
        samples = []
        for s in range(k):
            # odd i: one sample in three wrong; even i: only sample 0 may be right (voting loses it)
            right = (i + s) % 3 != 0 if i % 2 else (s == 0 and i % 3 != 0)
            answer = ref if right else str(i + 1000)
            # Cell 0 prints the answer (not for sample 1), cell 2 the reference; cell 3 repeats cell 1.
            cells = [
                (
                    f"print({answer})" if c == 0 else f"x{c % 2} = {c % 2}",
                    answer if c == 0 and s != 1 else (ref if c == 2 else ""),
                    STATUSES[(i + c + s) % 8],
                )
                for c in range((i + s) % 5)
            ]
            error = "backend failed" if (i, s) == (5, 0) else None
            trace = (
                None if error else make_trace(f"Q{i}", answer, cells, stop="answer" if (i + s) % 2 else "eos")
            )
            samples.append(
                SampleRecord(
                    answer=None if error else answer, correct=right and not error, trace=trace, error=error
                )
            )
        votes = [x.answer for x in samples if x.answer is not None]
        voted = max(set(votes), key=votes.count) if votes else None
        records.append(
            ProblemRecord(
                id=f"math-{i}",
                dataset="math",
                split="test",
                question=f"What is {i} + 2?",
                reference=ref,
                meta={"level": f"Level {i % 5 + 1}", "type": subjects[i % 3]},
                answer=voted,
                correct=voted == ref,
                pass_at_k=any(x.correct for x in samples),
                samples=samples,
                wall_time_s=1.0 + (i % 4),
            )
        )
    return records


def raw_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("k", [1, 3])
def test_report_numbers_match_an_independent_count(tmp_path: Path, k: int) -> None:
    run = write_run(
        tmp_path / "run", RunConfig(dataset="math", split="test", samples=k, concurrency=4), math_records(k)
    )
    report = build_report(run)
    everything = raw_lines(run)
    # math-5 sample 0 failed on the backend: the problem is not graded, and left out of every count.
    rows = [r for r in everything if not any(s["error"] for s in r["samples"])]
    assert report.infrastructure_failures == ["math-5"]

    assert report.problems == len(rows) == 23
    assert report.accuracy.count == sum(r["correct"] for r in rows)
    assert report.accuracy.rate == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    for level in {r["meta"]["level"] for r in rows}:
        group = [r for r in rows if r["meta"]["level"] == level]
        assert report.by_level[level].total == len(group)
        assert report.by_level[level].rate == pytest.approx(sum(r["correct"] for r in group) / len(group))
    assert list(report.by_level) == [f"Level {n}" for n in range(1, 6)]
    assert sum(g.total for g in report.by_subject.values()) == 23

    samples = [s for r in rows for s in r["samples"]]
    if k == 1:
        assert report.pass_at_k is None and report.mean_sample_accuracy is None
    else:
        assert report.pass_at_k is not None
        assert report.pass_at_k.count == sum(any(s["correct"] for s in r["samples"]) for r in rows)
        assert report.mean_sample_accuracy == pytest.approx(sum(s["correct"] for s in samples) / len(samples))
        assert report.accuracy.count != report.pass_at_k.count  # the fixture makes voting matter

    traced = [s["trace"] for s in samples if s["trace"] is not None]
    cells = [len(t["metadata"]["cells"]) for t in traced]
    assert report.tool_use.cells_per_trajectory.mean == pytest.approx(sum(cells) / len(cells))
    assert report.tool_use.cells_histogram == {n: cells.count(n) for n in sorted(set(cells))}
    statuses = [c["status"] for t in traced for c in t["metadata"]["cells"]]
    assert report.tool_use.cells_total == len(statuses)
    for status in ("error", "timeout", "killed", "crashed", "ok"):
        assert report.tool_use.status_rates[status] == pytest.approx(statuses.count(status) / len(statuses))

    def printed(ref: str, trace: dict[str, Any]) -> bool:
        return any(ref in b["output"].split() for b in trace["blocks"] if b["kind"] == "output")

    references = [(r["reference"], s["trace"]) for r in rows for s in r["samples"] if s["trace"]]
    in_output = report.tool_use.reference_in_output
    assert in_output is not None and in_output.total == len(traced)
    assert in_output.count == sum(printed(ref, t) for ref, t in references)
    assert in_output.count > sum(s["correct"] for s in samples)  # cell 2 prints it for wrong ones too
    codes = [[b["code"] for b in t["blocks"] if b["kind"] == "code"] for t in traced]
    assert report.tool_use.repeated_cell is not None
    assert report.tool_use.repeated_cell.count == sum(len(set(c)) < len(c) for c in codes) > 0

    assert report.sample_errors == sum(s["error"] is not None for r in everything for s in r["samples"]) == 1
    assert "no trace" not in report.stop_reasons  # the failed sample's problem is not graded
    assert sum(report.stop_reasons.values()) == len(samples)
    prompt = [
        sum(s["trace"]["metadata"]["usage"]["prompt_tokens"] for s in r["samples"] if s["trace"])
        for r in rows
    ]
    assert report.prompt_tokens.total == sum(prompt)
    busy = sum(r["wall_time_s"] for r in rows)
    assert report.throughput.busy_s == pytest.approx(busy)
    assert report.throughput.problems_per_s == pytest.approx(23 / (busy / 4))


def test_write_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", RunConfig(dataset="math", split="test", samples=3), math_records(3))
    report = write_report(run)
    assert set(report.plots) == {
        "accuracy_by_subject.png",
        "accuracy_by_level.png",
        "cells_per_trajectory.png",
        "accuracy_by_cells.png",
    }
    for name in report.plots:
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "report.json").read_text())
    assert saved["accuracy"]["count"] == report.accuracy.count
    markdown = (run / "report.md").read_text()
    assert (
        "pass@k" in markdown
        and "## By level" in markdown
        and "![accuracy_by_level](accuracy_by_level.png)" in markdown
    )


def test_plots_without_data_are_skipped(tmp_path: Path) -> None:
    record = ProblemRecord(
        id="g-0", dataset="gsm8k", split="test", question="1+1?", reference="2", answer="2", correct=True,
        pass_at_k=True, samples=[SampleRecord(answer="2", correct=True)], wall_time_s=0.5,
    )  # fmt: skip
    run = write_run(tmp_path / "run", RunConfig(dataset="gsm8k", split="test"), [record])
    report = write_report(run)
    assert report.plots == [] and report.by_level == {} and report.tool_use.trajectories == 0
    assert "## By level" not in (run / "report.md").read_text()


def test_answer_from_code_output_definition() -> None:
    trace = make_trace("q", "10", [("print(10.0)", "10.0", "ok"), ("print(3.25, 110)", "3.25 110", "ok")])
    assert answer_in_output("10", trace)
    assert answer_in_output("$3.25$", trace)
    assert not answer_in_output("11", trace)
    assert not answer_in_output("25", trace)
    assert not answer_in_output("3.2", trace)
    assert not answer_in_output("", trace)


def test_load_run_skips_a_torn_last_line_and_rejects_a_bad_middle_one(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", RunConfig(dataset="math", split="test"), math_records(1)[:3])
    with (run / "records.jsonl").open("a") as out:
        out.write('{"id": "math-99", "datas')
    assert len(load_run(run)[1]) == 3
    lines = (run / "records.jsonl").read_text().splitlines()
    (run / "records.jsonl").write_text("\n".join([lines[0], "{}", *lines[1:3]]) + "\n")
    with pytest.raises(RunFolderError, match=r"records\.jsonl:2"):
        load_run(run)
    with pytest.raises(RunFolderError, match=r"config\.json"):
        load_run(tmp_path / "missing")


def test_gsm8k_full_test_set_accuracy_matches_grading(
    tmp_path: Path, load_rows: Callable[[str, str], list[dict[str, Any]]]
) -> None:
    rows = load_rows("gsm8k", "test")
    assert len(rows) == 1319
    records, predictions = [], []
    for i, row in enumerate(rows):
        ref = str(row["answer"])
        # Deterministic: 3 of every 5 right, in the forms models write (the grader must see through them).
        answer = (f"{ref}.0", f"${ref}", ref, ref + "1", ref + ".5")[i % 5]
        trace = make_trace(row["question"], answer, [(f"print({answer!r})", answer, "ok")])
        # The flags are the grader's verdicts, as the harness sets them, not the test's own.
        correct = is_equivalent(answer, ref)
        records.append(
            ProblemRecord(
                id=row["id"], dataset="gsm8k", split="test", question=row["question"], reference=ref,
                answer=answer, correct=correct, pass_at_k=correct,
                samples=[SampleRecord(answer=answer, correct=correct, trace=trace)], wall_time_s=2.0,
            )
        )  # fmt: skip
        predictions.append({"id": row["id"], "prediction": f"\\boxed{{{answer}}}", "answer": ref})
    run = write_run(tmp_path / "gsm8k", RunConfig(dataset="gsm8k", split="test", concurrency=8), records)
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps(p) + "\n" for p in predictions))

    report = write_report(run)
    graded = grade_jsonl(preds)
    expected = sum(1 for i in range(1319) if i % 5 < 3)
    assert report.accuracy.count == graded.correct == expected
    assert report.accuracy.rate == pytest.approx(graded.accuracy) == pytest.approx(expected / 1319)
    assert report.tool_use.answer_from_output.rate == 1.0
    assert report.by_level == {} and "accuracy_by_level.png" not in report.plots
