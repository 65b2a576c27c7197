"""docs/results.json: the committed file validates, and an entry is computed from real run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from scipy.stats import binomtest

from benchmarks.records import ProblemRecord, RunConfig, SampleRecord
from runtime.trace import CellProvenance, CodeBlock, OutputBlock, TextBlock, Trace, TraceMetadata, Usage
from training.results import (
    RESULTS_PATH,
    EvalResult,
    EvidenceError,
    ExperimentResults,
    add_run,
    keep,
    load_outcomes,
    load_results,
    main,
    run_entry,
    wilson_interval,
)


def test_the_committed_results_file_validates() -> None:
    results = load_results(RESULTS_PATH)
    assert {r.role for r in results.runs} <= {"base", "control", "code"}


@pytest.mark.parametrize(("correct", "n"), [(0, 10), (5, 10), (70, 1319), (1319, 1319)])
def test_wilson_interval_matches_scipy(correct: int, n: int) -> None:
    reference = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(correct, n)
    assert lo == pytest.approx(reference.low, abs=1e-6)
    assert hi == pytest.approx(reference.high, abs=1e-6)


def test_an_eval_whose_numbers_disagree_is_refused() -> None:
    with pytest.raises(ValidationError, match="correct/n"):
        EvalResult(accuracy=0.5, correct=3, n=10, ci95=(0.1, 0.9))
    with pytest.raises(ValidationError, match="ci95"):
        EvalResult(accuracy=0.3, correct=3, n=10, ci95=(0.4, 0.9))
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        EvalResult(accuracy=30.0, correct=3, n=10, ci95=(0.1, 0.9))  # a percentage, not a fraction


def _trace(answer: str, cells: list[tuple[str, str]]) -> Trace:
    blocks: list[TextBlock | CodeBlock | OutputBlock] = [TextBlock(text="Let me compute.")]
    for code, status in cells:
        blocks += [CodeBlock(code=code), OutputBlock(output=answer, status=status)]
    return Trace(
        problem="q",
        blocks=blocks,
        final_answer=answer,
        metadata=TraceMetadata(
            usage=Usage(prompt_tokens=10, completion_tokens=5, cells=len(cells)),
            stop_reason="answer",
            cells=[
                CellProvenance(index=i, status=s, wall_time_s=0.01, output_chars=1, truncated=False)
                for i, (_, s) in enumerate(cells)
            ],
        ),
    )


def _bench(folder: Path, right: list[bool], cells: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        RunConfig(dataset="gsm8k", split="test", preset="tir-sft", max_tokens=512).model_dump_json()
    )
    with (folder / "records.jsonl").open("w") as out:
        for i, ok in enumerate(right):
            answer = "1" if ok else "2"
            record = ProblemRecord(
                id=f"gsm8k-test-{i}",
                dataset="gsm8k",
                split="test",
                question="q",
                reference="1",
                answer=answer,
                correct=ok,
                pass_at_k=ok,
                samples=[SampleRecord(answer=answer, correct=ok, trace=_trace(answer, cells))],
                wall_time_s=1.0,
            )
            out.write(record.model_dump_json() + "\n")
    return folder


def test_an_entry_is_computed_from_the_run_folders(tmp_path: Path) -> None:
    control = _bench(tmp_path / "text", [True, False, False, True, False], [])
    code = _bench(tmp_path / "calc", [True, True, True, False, False], [("x", "ok"), ("y", "error")])
    train = tmp_path / "train"
    train.mkdir()
    (train / "train_results.json").write_text(
        json.dumps(
            {
                "train_tokens": 1000,
                "tokens_per_s": 250.0,
                "wall_time_s": 4.0,
                "steps": 3,
                "epochs": 1.0,
                "bf16": False,
                "model": "base",
                "data": ["calc.jsonl"],
                "settings": {"lr": 1e-4, "warmup_ratio": 0.0, "lora": True, "lora_rank": 16, "epochs": 1.0},
                "environment": {"cpu": "AMD EPYC"},
            }
        )
    )
    entry = run_entry("calc", "code", evals={"gsm8k": code}, train_dir=train, control_gsm8k=control)
    gsm8k = entry.eval["gsm8k"]
    assert (gsm8k.correct, gsm8k.n, gsm8k.accuracy) == (3, 5, 0.6)
    assert gsm8k.max_tokens == 512 and gsm8k.preset == "tir-sft"
    # Problems 1 and 2: only the code run is right; problem 3: only the control.
    assert entry.mcnemar_vs_control is not None
    assert (entry.mcnemar_vs_control.wins, entry.mcnemar_vs_control.losses) == (2, 1)
    assert entry.tool_use is not None
    assert entry.tool_use.cells_per_problem == 2.0 and entry.tool_use.error_rate == 0.5
    assert (
        entry.train is not None and entry.train.tokens_per_s == 250.0 and entry.train.hardware == "AMD EPYC"
    )
    assert entry.recipe["lora_rank"] == 16 and entry.recipe["warmup_ratio"] == 0.0
    assert entry.data == ["calc.jsonl"]

    results_file = tmp_path / "results.json"
    add_run(entry, results_file)
    add_run(entry.model_copy(update={"name": "later"}), results_file)
    again = add_run(entry.model_copy(update={"commit": "abc1234"}), results_file)
    # The entry of the same name is replaced where it stands: a run that gains an evaluation keeps its place.
    assert [(r.name, r.commit) for r in again.runs] == [("calc", "abc1234"), ("later", entry.commit)]
    assert ExperimentResults.model_validate_json(results_file.read_text()) == again


def test_an_entry_names_its_run_folder_as_the_commands_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports record their folder absolute; results.json names it relative to where the commands run."""
    code = _bench(tmp_path / "runs" / "bench" / "calc", [True, False], [])
    monkeypatch.chdir(tmp_path)
    entry = run_entry("calc", "code", evals={"gsm8k": code.resolve()})
    assert entry.eval["gsm8k"].run_dir == "runs/bench/calc"
    elsewhere = _bench(tmp_path.parent / f"{tmp_path.name}-other", [True], [])
    assert run_entry("x", "code", evals={"gsm8k": elsewhere}).eval["gsm8k"].run_dir == str(
        elsewhere.resolve()
    )


def test_kept_evidence_gives_the_entry_the_run_folders_give(tmp_path: Path) -> None:
    """runs/ does not survive a change of machine: the files kept in docs/measurements must suffice."""
    control = _bench(tmp_path / "text", [True, False, False, True, False], [])
    code = _bench(tmp_path / "calc", [True, True, True, False, False], [("x", "ok"), ("y", "error")])
    kept = tmp_path / "measurements"
    kept.mkdir()
    keep("text", {"gsm8k": control}, None, kept)
    written = keep("calc", {"gsm8k": code}, None, kept)
    assert sorted(p.name for p in written) == ["gsm8k-calc-outcomes.jsonl", "gsm8k-calc-report.json"]
    first = json.loads((kept / "gsm8k-calc-outcomes.jsonl").read_text().splitlines()[0])
    assert first == {
        "id": "gsm8k-test-0",
        "answer": "1",
        "correct": True,
        "cells": 2,
        "stop_reason": "answer",
    }

    from_folders = run_entry("calc", "code", evals={"gsm8k": code}, control_gsm8k=control, data=["c"])
    from_kept = run_entry(
        "calc",
        "code",
        evals={"gsm8k": kept / "gsm8k-calc-report.json"},
        control_gsm8k=kept / "gsm8k-text-report.json",
        data=["c"],
    )
    assert from_kept.eval == from_folders.eval
    assert from_kept.tool_use == from_folders.tool_use and from_kept.stop_reasons == from_folders.stop_reasons
    assert from_kept.mcnemar_vs_control == from_folders.mcnemar_vs_control
    assert from_kept.mcnemar_vs_control is not None and from_kept.mcnemar_vs_control.wins == 2

    # A problem lost to the infrastructure is not graded: neither path pairs it.
    records = (code / "records.jsonl").read_text().splitlines()
    lost = ProblemRecord.model_validate_json(records[0])
    lost.samples[0].error = "kernel lost"
    (code / "records.jsonl").write_text("\n".join([lost.model_dump_json(), *records[1:]]) + "\n")
    keep("calc", {"gsm8k": code}, None, kept)
    assert "gsm8k-test-0" not in load_outcomes(kept / "gsm8k-calc-report.json")
    assert load_outcomes(kept / "gsm8k-calc-report.json") == load_outcomes(code)


def test_a_control_without_kept_outcomes_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _bench(tmp_path / "calc", [True, False], [])
    kept = tmp_path / "measurements"
    kept.mkdir()
    keep("text", {"gsm8k": _bench(tmp_path / "text", [False, True], [])}, None, kept)
    (kept / "gsm8k-text-outcomes.jsonl").unlink()
    with pytest.raises(EvidenceError, match="no per-problem outcomes"):
        run_entry("calc", "code", evals={"gsm8k": code}, control_gsm8k=kept / "gsm8k-text-report.json")
    results = tmp_path / "results.json"
    argv = ["add", "calc", "--role", "code", "--eval", f"gsm8k={code}", "--data", "c"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--control", str(kept / "gsm8k-text-report.json"), "--results", str(results)])
    assert exit_info.value.code == 2 and "no per-problem outcomes" in capsys.readouterr().err
    assert not results.exists()  # nothing half-written


def test_plots_are_drawn_from_the_committed_results_and_kept_reports(tmp_path: Path) -> None:
    from training.results_plots import ACCURACY_PNG, CELLS_PNG, accuracy_by_cells
    from training.results_plots import main as plot_main

    results = load_results(RESULTS_PATH)
    curves = accuracy_by_cells(results)
    for run in results.runs:  # every run's curve covers its whole GSM8K evaluation
        if run.name in curves:
            assert sum(rate.total for rate in curves[run.name].values()) == run.eval["gsm8k"].n
            assert sum(rate.count for rate in curves[run.name].values()) == run.eval["gsm8k"].correct
    assert any(max(curve) > 0 for curve in curves.values()), "no run that wrote code is plotted"
    plot_main(["--out", str(tmp_path)])
    for name in (ACCURACY_PNG, CELLS_PNG):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_plot_without_a_results_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.results_plots import main as plot_main

    with pytest.raises(SystemExit) as exit_info:
        plot_main(["--results", str(tmp_path / "missing.json"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "missing.json" in capsys.readouterr().err
