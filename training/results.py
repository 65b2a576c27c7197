"""The fine-tuning experiment's results file (``docs/results.json``): its schema and how an entry is made.

One entry per run of the experiment (issue #13): what it trained on, with which recipe, how fast,
and how it scored on each evaluation set, with a 95% Wilson interval, McNemar's test against the
text-only control on GSM8K, and how the model used the interpreter.  ``ExperimentResults`` is the
schema; a test validates the committed file against it.  ``run_entry`` builds an entry from the
folders the pipeline already writes: ``train_results.json`` of ``mathcoder train`` and the run
folders of ``mathcoder bench`` (read through ``benchmarks.summary``), so no number is typed by hand.

``python -m training.results_plots`` draws ``docs/results-accuracy.png`` and ``docs/results-cells.png``.

``python -m training.results add NAME --role code --train runs/train/calc --eval gsm8k=runs/bench/calc
--control runs/bench/text`` adds (or replaces) one entry in ``docs/results.json``.

``runs/`` is not committed and does not survive a change of machine, so the evidence behind an entry
is *kept* in ``docs/measurements`` as soon as a run finishes: ``python -m training.results keep NAME
--eval gsm8k=runs/bench/calc --train runs/train/calc`` writes ``gsm8k-NAME-report.json`` (the bench
report), ``gsm8k-NAME-outcomes.jsonl`` (per problem: id, answer, grade, cells, stop reason; no
question text) and ``NAME-train_results.json``.  Every ``--eval``, ``--control`` and ``--train`` of
``add`` takes either the run folder or these kept files, and McNemar's test pairs the outcomes by id.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from benchmarks.compare import mcnemar
from benchmarks.summary import Report, build_report, load_run

RESULTS_PATH = Path(__file__).resolve().parent.parent / "docs" / "results.json"
MEASUREMENTS = RESULTS_PATH.parent / "measurements"
REPORT_SUFFIX, OUTCOMES_SUFFIX = "-report.json", "-outcomes.jsonl"


class EvidenceError(ValueError):
    """A run folder or kept file that cannot back an entry (missing, or not what it claims)."""


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound near 0, where GSM8K accuracies of small models sit)."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


class EvalResult(BaseModel):
    accuracy: float = Field(ge=0, le=1, description="A fraction: correct / n.")
    correct: int = Field(ge=0)
    n: int = Field(ge=1)
    ci95: tuple[float, float] = Field(description="95% Wilson interval of the accuracy.")
    max_tokens: int | None = Field(default=None, description="The completion-token cap per problem.")
    preset: str | None = None
    run_dir: str | None = Field(default=None, description="The bench run folder (not committed).")

    @model_validator(mode="after")
    def _consistent(self) -> EvalResult:
        if self.correct > self.n or abs(self.accuracy - self.correct / self.n) > 1e-9:
            raise ValueError(f"accuracy {self.accuracy} is not correct/n = {self.correct}/{self.n}")
        lo, hi = self.ci95
        if not 0 <= lo <= self.accuracy <= hi <= 1:
            raise ValueError(f"ci95 {self.ci95} does not hold the accuracy {self.accuracy}")
        return self


class TrainInfo(BaseModel):
    tokens: int = Field(ge=0, description="Real tokens trained on.")
    tokens_per_s: float = Field(ge=0)
    wall_s: float = Field(ge=0)
    hardware: str
    steps: int | None = None
    epochs: float | None = None


class McNemarVsControl(BaseModel):
    p: float = Field(ge=0, le=1)
    wins: int = Field(ge=0, description="GSM8K problems this run gets right and the control does not.")
    losses: int = Field(ge=0, description="GSM8K problems the control gets right and this run does not.")


class ToolUse(BaseModel):
    cells_per_problem: float = Field(ge=0)
    error_rate: float = Field(ge=0, le=1, description="Cells that raised, over all cells.")
    timeout_rate: float = Field(ge=0, le=1, description="Cells that hit their time limit, over all cells.")
    answers_from_output: float = Field(
        ge=0, le=1, description="Answers found as a token in an execution output of their trace."
    )


class RunResult(BaseModel):
    name: str
    role: Literal["base", "control", "code"]
    data: list[str] = Field(description="The SFT data sets (empty for the base model).")
    recipe: dict[str, Any] = Field(
        description="Training settings; continues_from names a run it started from."
    )
    train: TrainInfo | None = Field(description="None for the base model.")
    eval: dict[str, EvalResult] = Field(description="By data set: gsm8k (the full test), asdiv, mawps.")
    mcnemar_vs_control: McNemarVsControl | None = None
    tool_use: ToolUse | None = None
    stop_reasons: dict[str, int] = Field(default_factory=dict)
    commit: str


class ExperimentResults(BaseModel):
    runs: list[RunResult]

    @model_validator(mode="after")
    def _unique(self) -> ExperimentResults:
        names = [r.name for r in self.runs]
        if len(names) != len(set(names)):
            raise ValueError(f"run names repeat: {names}")
        return self


def load_results(path: Path = RESULTS_PATH) -> ExperimentResults:
    return ExperimentResults.model_validate_json(path.read_text(encoding="utf-8"))


def load_report(source: Path) -> Report:
    """The bench report of a run folder, or a kept ``*-report.json``."""
    if source.is_dir():
        return build_report(source)
    if source.is_file() and source.name.endswith(REPORT_SUFFIX):
        return Report.model_validate_json(source.read_text(encoding="utf-8"))
    raise EvidenceError(f"{source}: neither a bench run folder nor a kept *{REPORT_SUFFIX}")


def load_outcomes(source: Path) -> dict[str, bool]:
    """Problem id -> graded correct, from a run folder or the outcomes kept beside a kept report."""
    if source.is_dir():
        _, records = load_run(source)
        return {r.id: r.correct for r in records if not r.infrastructure_failure}
    outcomes = source.with_name(source.name.removesuffix(REPORT_SUFFIX) + OUTCOMES_SUFFIX)
    if not outcomes.is_file():
        raise EvidenceError(f"{source}: no per-problem outcomes kept beside it ({outcomes.name})")
    rows = [json.loads(line) for line in outcomes.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["id"]: bool(row["correct"]) for row in rows}


def keep(
    name: str, evals: dict[str, Path], train_dir: Path | None, folder: Path = MEASUREMENTS
) -> list[Path]:
    """Copy the evidence of a finished run out of ``runs/`` into ``folder`` (see the module docstring)."""
    written = []
    for dataset, bench_dir in evals.items():
        report = build_report(bench_dir)
        _, records = load_run(bench_dir)
        report_path = folder / f"{dataset}-{name}{REPORT_SUFFIX}"
        report_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
        rows = []
        for r in records:
            if r.infrastructure_failure:  # not graded: left out, as load_outcomes leaves it out of a folder
                continue
            trace = r.samples[0].trace if len(r.samples) == 1 else None
            rows.append(
                {
                    "id": r.id,
                    "answer": r.answer,
                    "correct": r.correct,
                    "cells": len(trace.code_cells) if trace else None,
                    "stop_reason": trace.metadata.stop_reason if trace else None,
                }
            )
        outcomes_path = folder / f"{dataset}-{name}{OUTCOMES_SUFFIX}"
        outcomes_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        written += [report_path, outcomes_path]
    if train_dir is not None:
        target = folder / f"{name}-train_results.json"
        target.write_text((train_dir / "train_results.json").read_text(encoding="utf-8"), encoding="utf-8")
        written.append(target)
    return written


def _shown(run_dir: str | None) -> str | None:
    """A run folder as the repository's commands name it: relative where it lies under the working directory
    (bench reports record it absolute; results.json should not carry one machine's paths)."""
    if run_dir is None or not Path(run_dir).is_relative_to(Path.cwd()):
        return run_dir
    return str(Path(run_dir).relative_to(Path.cwd()))


def eval_entry(source: Path) -> tuple[EvalResult, ToolUse, dict[str, int]]:
    """Accuracy (with its interval), tool use and stop reasons of one bench run (folder or kept report)."""
    report = load_report(source)
    correct, n = report.accuracy.count, report.accuracy.total
    use = report.tool_use
    evaluation = EvalResult(
        accuracy=correct / n,
        correct=correct,
        n=n,
        ci95=wilson_interval(correct, n),
        max_tokens=report.config.max_tokens,
        preset=report.config.preset,
        run_dir=_shown(report.run_dir),
    )
    tool_use = ToolUse(
        cells_per_problem=use.cells_per_trajectory.mean,
        error_rate=use.status_rates.get("error", 0.0),
        timeout_rate=use.status_rates.get("timeout", 0.0),
        answers_from_output=use.answer_from_output.rate,
    )
    return evaluation, tool_use, report.stop_reasons


def train_entry(source: Path) -> tuple[TrainInfo, dict[str, Any], list[str]]:
    """(throughput, recipe, data) from a ``mathcoder train`` folder's ``train_results.json`` (or a kept copy)."""
    path = source / "train_results.json" if source.is_dir() else source
    if not path.is_file():
        raise EvidenceError(f"{source}: no train_results.json")
    results = json.loads(path.read_text(encoding="utf-8"))
    env = results.get("environment", {})
    hardware = env.get("gpu") or env.get("cpu") or env.get("machine")
    if not hardware:  # written before environment() named the CPU
        hardware = (
            f"{env.get('cpus', '?')} CPUs (model not recorded), {env.get('platform', 'unknown platform')}"
        )
    info = TrainInfo(
        tokens=results["train_tokens"],
        tokens_per_s=results["tokens_per_s"],
        wall_s=results["wall_time_s"],
        hardware=str(hardware),
        steps=results["steps"],
        epochs=results["epochs"],
    )
    # warmup_ratio is recorded because a one-step run needs 0: the first step of a linear warmup has learning rate 0.
    keep = (
        "epochs",
        "lr",
        "warmup_ratio",
        "batch_size",
        "grad_accum",
        "max_len",
        "packing",
        "lora",
        "lora_rank",
        "lora_alpha",
        "bf16",
    )
    recipe = {k: results["settings"].get(k) for k in keep}
    recipe["bf16"] = results["bf16"]
    recipe["model"] = results["model"]
    return info, recipe, list(results["data"])


def run_entry(
    name: str,
    role: Literal["base", "control", "code"],
    *,
    evals: dict[str, Path],
    train_dir: Path | None = None,
    control_gsm8k: Path | None = None,
    continues_from: str | None = None,
    data: list[str] | None = None,
) -> RunResult:
    """One results entry from the run's train folder (none for the base model) and bench folders.

    A trained run whose folder is gone (``runs/`` does not survive a change of machine) is entered
    without ``train_dir``: ``data`` names its data, the recipe is ``training.recipe.RECIPE`` of this
    commit, marked as such, and ``train`` stays empty rather than typed in by hand."""
    results: dict[str, EvalResult] = {}
    tool_use: ToolUse | None = None
    stops: dict[str, int] = {}
    for dataset, folder in evals.items():
        results[dataset], use, reasons = eval_entry(folder)
        if dataset == "gsm8k":
            tool_use, stops = use, reasons
    if train_dir is not None:
        train, recipe, trained_on = train_entry(train_dir)
        data = list(data) if data else trained_on  # --data names them where the files' paths say little
    elif role == "base":
        train, recipe, data = None, {}, []
    else:
        from training.recipe import DATA_LIMIT, RECIPE

        train, recipe = None, {**RECIPE, "data_limit": DATA_LIMIT, "train_folder": "lost"}
        data = list(data or [])
    if continues_from is not None:
        recipe["continues_from"] = continues_from
    versus = None
    if control_gsm8k is not None and "gsm8k" in evals and role != "control":
        ours, theirs = load_outcomes(evals["gsm8k"]), load_outcomes(control_gsm8k)
        paired = [i for i in ours if i in theirs]
        wins = sum(ours[i] and not theirs[i] for i in paired)
        losses = sum(theirs[i] and not ours[i] for i in paired)
        versus = McNemarVsControl(p=mcnemar(wins, losses).p_value, wins=wins, losses=losses)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return RunResult(
        name=name,
        role=role,
        data=data,
        recipe=recipe,
        train=train,
        eval=results,
        mcnemar_vs_control=versus,
        tool_use=tool_use,
        stop_reasons=stops,
        commit=commit or "unknown",
    )


def add_run(entry: RunResult, path: Path = RESULTS_PATH) -> ExperimentResults:
    """Add ``entry`` to the results file, replacing a run of the same name where it stands (the
    plots and tables keep their order when a run gains an evaluation); write it back validated."""
    current = load_results(path) if path.is_file() else ExperimentResults(runs=[])
    runs = [entry if r.name == entry.name else r for r in current.runs]
    if all(r.name != entry.name for r in current.runs):
        runs.append(entry)
    updated = ExperimentResults(runs=runs)
    path.write_text(updated.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return updated


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="The experiment's results file: add an entry, keep a run's evidence."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="Add (or replace) one run's entry.")
    add.add_argument("name")
    add.add_argument("--role", choices=["base", "control", "code"], required=True)
    add.add_argument("--train", type=Path, default=None, help="The mathcoder train run folder.")
    add.add_argument(
        "--eval", action="append", default=[], metavar="DATASET=BENCH_DIR", help="A bench run folder."
    )
    add.add_argument("--control", type=Path, default=None, help="The control's GSM8K bench folder.")
    add.add_argument("--continues-from", default=None, help="The run whose weights this one started from.")
    add.add_argument(
        "--data",
        action="append",
        default=None,
        help="The run's data set names (default: the files it trained on).",
    )
    add.add_argument("--results", type=Path, default=RESULTS_PATH)
    kept = sub.add_parser("keep", help="Keep a finished run's evidence in docs/measurements.")
    kept.add_argument("name")
    kept.add_argument("--eval", action="append", default=[], metavar="DATASET=BENCH_DIR")
    kept.add_argument("--train", type=Path, default=None, help="The mathcoder train run folder.")
    kept.add_argument("--folder", type=Path, default=MEASUREMENTS)
    args = parser.parse_args(argv)
    evals = {}
    for item in args.eval:
        dataset, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"--eval wants DATASET=BENCH_DIR, got {item!r}")
        evals[dataset] = Path(folder)
    try:
        if args.command == "keep":
            for path in keep(args.name, evals, args.train, args.folder):
                print(path)
            return
        entry = run_entry(
            args.name,
            args.role,
            evals=evals,
            train_dir=args.train,
            control_gsm8k=args.control,
            continues_from=args.continues_from,
            data=args.data,
        )
    except (EvidenceError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    add_run(entry, args.results)
    print(entry.model_dump_json())


if __name__ == "__main__":
    main()
