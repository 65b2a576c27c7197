"""The report of one run folder: ``report.json``, ``report.md`` and PNG plots, from the records alone.

This module owns reading a run folder back (:func:`load_run`) and every number a report shows.
Nothing is taken from the process that ran the benchmark: a report is a pure function of
``config.json`` and ``records.jsonl`` (see :mod:`benchmarks.records`).

Definitions (each field's description repeats the one it uses):

* **accuracy** is maj@k: the share of problems whose voted answer is correct (``ProblemRecord.correct``).
  With k > 1 samples also **pass@k** (some sample is correct) and the **mean sample accuracy**
  (the share of all sampled trajectories that are correct).
* **by level / by subject**: MATH's ``meta["level"]`` and ``meta["type"]`` (or ``meta["subject"]``).
* **cells** are counted per trajectory (sample): ``len(trace.metadata.cells)``, else ``usage.cells``,
  else the number of code blocks.  With k = 1 a trajectory is a problem.
* **cell status rates** are over all executed cells of all trajectories (``metadata.cells[].status``;
  for traces without provenance, the status of their output blocks).
* **answer from code output**: the sample's final answer (stripped of spaces and ``$``) occurs in the
  text of an output block of the same trace as a whole token — not inside a longer number or word;
  ``10`` matches ``10`` and ``10.0`` but not ``110`` or ``3.10``.  The share is over samples with an answer.
* **reference in an output**: the same test with the problem's reference answer, over all trajectories,
  answered or not: the accuracy a perfect choice among the values the code printed would reach -- a
  model that computes the answer and then talks past it scores here and not in the accuracy.
* **repeated cell**: a trajectory wrote a cell whose code (stripped) equals an earlier cell's: a greedy
  model that loops.  The loop ends a trajectory at once when a cell repeats the one just before it
  (stop reason ``repeated_cell``, the cell not run); a repeat of an older cell runs, and counts here too.
* **tokens** are per problem, summed over its samples; **time** is ``ProblemRecord.wall_time_s``.
* **throughput**: records carry durations, not timestamps, so the run's wall span is estimated as
  ``sum(wall_time_s) / min(concurrency, problems)`` (the concurrency slots kept full).  A resumed
  run's span is then the time its problems took, not the calendar time between its sessions.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from benchmarks.bench_io import percentile
from benchmarks.records import ProblemRecord, RunConfig, SampleRecord
from runtime.trace import ExecutionStatus, OutputBlock, Trace

logger = logging.getLogger(__name__)

CELLS_CAP = 10
"""Plots and the accuracy-by-cells table put trajectories with this many cells or more in one bar."""


class RunFolderError(ValueError):
    """A run folder lacks a file, or a line of ``records.jsonl`` is not a ``ProblemRecord``."""


def load_run(run_dir: str | Path) -> tuple[RunConfig, list[ProblemRecord]]:
    """Read ``config.json`` and ``records.jsonl``; a torn last line (killed run) is skipped with a warning.

    When an id occurs twice (a resumed run that redid a problem) the later record wins.
    """
    run_dir = Path(run_dir)
    config_path, records_path = run_dir / "config.json", run_dir / "records.jsonl"
    for path in (config_path, records_path):
        if not path.is_file():
            raise RunFolderError(f"{path} not found; a run folder holds config.json and records.jsonl")
    config = RunConfig.model_validate_json(config_path.read_text(encoding="utf-8"))
    lines = records_path.read_text(encoding="utf-8").splitlines()
    records: dict[str, ProblemRecord] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = ProblemRecord.model_validate_json(line)
        except ValueError as exc:
            if number == len(lines):
                logger.warning("%s:%d: skipping a torn last line (killed run?)", records_path, number)
                continue
            raise RunFolderError(f"{records_path}:{number}: not a ProblemRecord: {exc}") from exc
        records[record.id] = record
    return config, list(records.values())


# ------------------------------------------------------------------------------------------- models


class Rate(BaseModel):
    count: int
    total: int
    rate: float = Field(description="count / total; 0 when total is 0.")


def _rate(count: int, total: int) -> Rate:
    return Rate(count=count, total=total, rate=count / total if total else 0.0)


class Stats(BaseModel):
    mean: float
    p50: float
    p90: float
    total: float


def _stats(values: Sequence[float]) -> Stats:
    if not values:
        return Stats(mean=0.0, p50=0.0, p90=0.0, total=0.0)
    return Stats(
        mean=sum(values) / len(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        total=float(sum(values)),
    )


class ToolUse(BaseModel):
    trajectories: int = Field(description="Samples that have a trace.")
    cells_per_trajectory: Stats
    cells_histogram: dict[int, int] = Field(description="Number of cells -> trajectories with that many.")
    accuracy_by_cells: dict[str, Rate] = Field(
        description=f"Sample accuracy by cells ('{CELLS_CAP}+' bucket)."
    )
    cells_total: int
    status_counts: dict[str, int] = Field(description="Executed cells by status.")
    status_rates: dict[str, float] = Field(description="status_counts over cells_total.")
    answer_from_output: Rate = Field(
        description="Answers found as a token in an output block of their trace."
    )
    # None in reports written before these two were computed (kept reports are read back).
    reference_in_output: Rate | None = Field(
        None, description="Trajectories with the reference answer as a token in an output block."
    )
    repeated_cell: Rate | None = Field(
        None, description="Trajectories that wrote a cell whose code repeats an earlier cell of theirs."
    )


class Throughput(BaseModel):
    busy_s: float = Field(description="Sum of the problems' wall times.")
    span_s: float = Field(description="Estimated wall span: busy_s / min(concurrency, problems).")
    problems_per_s: float
    tokens_per_s: float = Field(description="Prompt + completion tokens over span_s.")
    completion_tokens_per_s: float


class Report(BaseModel):
    run_dir: str
    config: RunConfig
    problems: int
    samples: int = Field(description="Trajectories in all (problems × k).")
    accuracy: Rate = Field(description="maj@k: the voted answer is correct.")
    pass_at_k: Rate | None = Field(description="Some sample is correct; None when k = 1.")
    mean_sample_accuracy: float | None = Field(description="Correct samples / samples; None when k = 1.")
    by_level: dict[str, Rate]
    by_subject: dict[str, Rate]
    tool_use: ToolUse
    prompt_tokens: Stats
    prefill_tokens: Stats = Field(
        description="Prompt tokens the engine computed (the rest came from its cache; all, for engines without one)."
    )
    prefill_tokens_per_round: float = Field(
        description="Computed prompt tokens per round (the first model call and one after each cell; a "
        "step continued past its token cap is in the same round)."
    )
    completion_tokens: Stats
    time_s: Stats
    throughput: Throughput
    stop_reasons: dict[str, int]
    sample_errors: int = Field(description="Samples whose record carries an error.")
    problems_with_errors: int
    infrastructure_failures: list[str] = Field(
        default_factory=list,
        description="Problems not graded: a backend or sandbox failure after retries (a resume redoes them).",
    )
    plots: list[str] = Field(default_factory=list, description="PNG files written next to the report.")


# ---------------------------------------------------------------------------------------- computing


def _cell_count(trace: Trace) -> int:
    return len(trace.metadata.cells) or trace.metadata.usage.cells or len(trace.code_cells)


def _cell_statuses(trace: Trace) -> list[str]:
    if trace.metadata.cells:
        return [str(cell.status) for cell in trace.metadata.cells]
    return [str(b.status) for b in trace.blocks if isinstance(b, OutputBlock) and b.status is not None]


def answer_in_output(answer: str, trace: Trace) -> bool:
    """Whether ``answer`` occurs as a whole token in an output block of ``trace`` (module docstring)."""
    needle = answer.strip().strip("$").strip()
    if not needle:
        return False
    pattern = re.compile(r"(?<![\w.])" + re.escape(needle) + r"(?:\.0+)?(?!\w)(?!\.\d)")
    return any(isinstance(b, OutputBlock) and pattern.search(b.output) for b in trace.blocks)


def _by_key(records: Iterable[ProblemRecord], key: Callable[[ProblemRecord], str | None]) -> dict[str, Rate]:
    groups: dict[str, list[bool]] = {}
    for record in records:
        name = key(record)
        if name is not None:
            groups.setdefault(name, []).append(record.correct)
    natural = lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]  # noqa: E731
    return {name: _rate(sum(groups[name]), len(groups[name])) for name in sorted(groups, key=natural)}


def _meta_str(record: ProblemRecord, *names: str) -> str | None:
    for name in names:
        value = record.meta.get(name)
        if value is not None and str(value).strip():
            return str(value)
    return None


def _repeats_a_cell(trace: Trace) -> bool:
    seen: set[str] = set()
    for cell in trace.code_cells:
        code = cell.code.strip()
        if code in seen:
            return True
        seen.add(code)
    return False


def _tool_use(samples: list[tuple[SampleRecord, str]]) -> ToolUse:
    """Tool-use figures of ``samples``, each with its problem's reference answer."""
    traced = [(s, s.trace) for s, _ in samples if s.trace is not None]
    references = [(ref, s.trace) for s, ref in samples if s.trace is not None]
    counts = [_cell_count(t) for _, t in traced]
    statuses = Counter(status for _, t in traced for status in _cell_statuses(t))
    cells_total = sum(statuses.values())
    by_cells: dict[int, list[bool]] = {}
    for (sample, _), n in zip(traced, counts, strict=True):
        by_cells.setdefault(min(n, CELLS_CAP), []).append(sample.correct)
    answered = [(s.answer, t) for s, t in traced if s.answer is not None]
    return ToolUse(
        trajectories=len(traced),
        cells_per_trajectory=_stats([float(n) for n in counts]),
        cells_histogram=dict(sorted(Counter(counts).items())),
        accuracy_by_cells={
            (f"{n}+" if n == CELLS_CAP else str(n)): _rate(sum(v), len(v))
            for n, v in sorted(by_cells.items())
        },
        cells_total=cells_total,
        status_counts={str(s): statuses.get(str(s), 0) for s in ExecutionStatus},
        status_rates={
            str(s): statuses.get(str(s), 0) / cells_total if cells_total else 0.0 for s in ExecutionStatus
        },
        answer_from_output=_rate(sum(answer_in_output(a, t) for a, t in answered), len(answered)),
        reference_in_output=_rate(sum(answer_in_output(r, t) for r, t in references), len(references)),
        repeated_cell=_rate(sum(_repeats_a_cell(t) for _, t in traced), len(traced)),
    )


def _usage_sum(record: ProblemRecord, field: str) -> float:
    return float(sum(getattr(s.trace.metadata.usage, field) for s in record.samples if s.trace is not None))


def build_report(run_dir: str | Path) -> Report:
    """Compute the report of a run folder (nothing is written; see :func:`write_report`)."""
    config, everything = load_run(run_dir)
    # A problem whose trajectory failed on the backend or the sandbox (after its retries) has no
    # outcome of the model's: it is listed apart and left out of every rate and cost below.
    records = [r for r in everything if not r.infrastructure_failure]
    failures = [r.id for r in everything if r.infrastructure_failure]
    samples = [s for r in records for s in r.samples]
    multi = config.samples > 1 or any(len(r.samples) > 1 for r in records)
    prompt = [_usage_sum(r, "prompt_tokens") for r in records]
    completion = [_usage_sum(r, "completion_tokens") for r in records]
    prefill = [p - _usage_sum(r, "cached_prompt_tokens") for p, r in zip(prompt, records, strict=True)]
    # A round is one model call: the first, and one after each cell that ran.
    rounds = sum(s.trace.metadata.usage.cells + 1 for s in samples if s.trace is not None)
    busy = sum(r.wall_time_s for r in records)
    span = busy / max(1, min(config.concurrency, len(records)))
    stops = Counter(
        (s.trace.metadata.stop_reason or "unknown") if s.trace is not None else "no trace" for s in samples
    )
    return Report(
        run_dir=str(run_dir),
        config=config,
        problems=len(records),
        samples=len(samples),
        accuracy=_rate(sum(r.correct for r in records), len(records)),
        pass_at_k=_rate(sum(r.pass_at_k for r in records), len(records)) if multi else None,
        mean_sample_accuracy=(sum(s.correct for s in samples) / len(samples) if samples else 0.0)
        if multi
        else None,
        by_level=_by_key(records, lambda r: _meta_str(r, "level")),
        by_subject=_by_key(records, lambda r: _meta_str(r, "type", "subject")),
        tool_use=_tool_use([(s, r.reference) for r in records for s in r.samples]),
        prompt_tokens=_stats(prompt),
        prefill_tokens=_stats(prefill),
        prefill_tokens_per_round=sum(prefill) / rounds if rounds else 0.0,
        completion_tokens=_stats(completion),
        time_s=_stats([r.wall_time_s for r in records]),
        throughput=Throughput(
            busy_s=busy,
            span_s=span,
            problems_per_s=len(records) / span if span else 0.0,
            tokens_per_s=(sum(prompt) + sum(completion)) / span if span else 0.0,
            completion_tokens_per_s=sum(completion) / span if span else 0.0,
        ),
        stop_reasons=dict(stops.most_common()),
        sample_errors=sum(s.error is not None for r in everything for s in r.samples),
        problems_with_errors=len(failures),  # a sample error is what makes a problem one
        infrastructure_failures=failures,
    )


# ------------------------------------------------------------------------------------------- output


def _bar(path: Path, title: str, rates: dict[str, Rate], xlabel: str, *, counts_only: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rates)
    values = [rates[n].total if counts_only else rates[n].rate * 100 for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(names) + 2), 4))
    bars = ax.bar(range(len(names)), values, color="#4c72b0")
    tilt = len(names) > 5
    ax.set_xticks(range(len(names)), names, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("trajectories" if counts_only else "accuracy (%)")
    if not counts_only:
        ax.set_ylim(0, 105)
    labels = [str(rates[n].total) if counts_only else f"n={rates[n].total}" for n in names]
    ax.bar_label(bars, labels=labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(report: Report, run_dir: Path) -> list[str]:
    """Write the PNG plots whose data the run has; returns their file names."""
    by_cells = report.tool_use.accuracy_by_cells  # its totals are the (capped) cells histogram
    plots: list[tuple[str, str, dict[str, Rate], str, bool]] = [
        ("accuracy_by_subject.png", "Accuracy by subject", report.by_subject, "subject", False),
        ("accuracy_by_level.png", "Accuracy by level", report.by_level, "level", False),
        ("cells_per_trajectory.png", "Cells per trajectory", by_cells, "cells", True),
        ("accuracy_by_cells.png", "Sample accuracy by number of cells", by_cells, "cells", False),
    ]
    written = []
    for name, title, rates, xlabel, counts_only in plots:
        if rates:
            _bar(run_dir / name, title, rates, xlabel, counts_only=counts_only)
            written.append(name)
    return written


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _pct(rate: Rate) -> str:
    return f"{rate.rate:.1%} ({rate.count}/{rate.total})"


def render_markdown(report: Report) -> str:
    """The human-readable report: headline numbers, tables, and links to the plots."""
    c, tool = report.config, report.tool_use
    lines = [
        f"# {c.dataset}/{c.split} — {c.model or 'default model'} ({c.backend}, preset {c.preset})",
        "",
        f"{report.problems} problems, {c.samples} sample(s) each, temperature {c.temperature}.",
        "",
        *_table(("metric", "value"), [("accuracy (maj@k)", _pct(report.accuracy))]),
    ]
    if report.pass_at_k is not None and report.mean_sample_accuracy is not None:
        lines += [
            f"| pass@k | {_pct(report.pass_at_k)} |",
            f"| mean sample accuracy | {report.mean_sample_accuracy:.1%} |",
        ]
    for title, groups in (("Level", report.by_level), ("Subject", report.by_subject)):
        if groups:
            lines += [
                "",
                f"## By {title.lower()}",
                "",
                *_table((title, "accuracy", "n"), ((k, f"{v.rate:.1%}", v.total) for k, v in groups.items())),
            ]
    s = tool.cells_per_trajectory
    lines += [
        "",
        "## Tool use",
        "",
        f"Cells per trajectory: mean {s.mean:.2f}, p50 {s.p50:g}, p90 {s.p90:g}; {tool.cells_total} cells in all.",
        f"Answers found in a code output of their trace: {_pct(tool.answer_from_output)}.",
        *(
            [f"Trajectories with the reference answer in a code output: {_pct(tool.reference_in_output)}."]
            if tool.reference_in_output
            else []
        ),
        *(
            [f"Trajectories that repeat a cell verbatim: {_pct(tool.repeated_cell)}."]
            if tool.repeated_cell
            else []
        ),
        "",
        *_table(
            ("cell status", "cells", "rate"),
            ((k, tool.status_counts[k], f"{tool.status_rates[k]:.1%}") for k in tool.status_counts),
        ),
        "",
        *_table(
            ("cells", "sample accuracy", "n"),
            ((k, f"{v.rate:.1%}", v.total) for k, v in tool.accuracy_by_cells.items()),
        ),
        "",
        "## Cost",
        "",
        *_table(
            ("per problem", "mean", "p50", "p90", "total"),
            (
                (name, f"{st.mean:.1f}", f"{st.p50:.1f}", f"{st.p90:.1f}", f"{st.total:.1f}")
                for name, st in (
                    ("prompt tokens", report.prompt_tokens),
                    ("prompt tokens computed (not cached)", report.prefill_tokens),
                    ("completion tokens", report.completion_tokens),
                    ("time (s)", report.time_s),
                )
            ),
        ),
        "",
        f"Throughput over an estimated span of {report.throughput.span_s:.1f} s (busy {report.throughput.busy_s:.1f} s / "
        f"min(concurrency, problems)): {report.throughput.problems_per_s:.3f} problems/s, "
        f"{report.throughput.tokens_per_s:.1f} tokens/s ({report.throughput.completion_tokens_per_s:.1f} completion); "
        f"{report.prefill_tokens_per_round:.0f} prompt tokens computed per round (model call after each cell).",
        "",
        "## Stop reasons and errors",
        "",
        *_table(("stop reason", "samples"), report.stop_reasons.items()),
        "",
        f"Samples with an error: {report.sample_errors} (problems: {report.problems_with_errors}).",
        "",
        f"Not graded (backend or sandbox failures after retries; a resumed run solves them again): "
        f"{len(report.infrastructure_failures)}"
        + (f" — {', '.join(report.infrastructure_failures)}" if report.infrastructure_failures else "")
        + ".",
    ]
    if report.plots:
        lines += ["", "## Plots", "", *(f"![{p.removesuffix('.png')}]({p})" for p in report.plots)]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path) -> Report:
    """Build the report and write ``report.json``, ``report.md`` and the plots into ``run_dir``."""
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    report.plots = write_plots(report, run_dir)
    (run_dir / "report.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (run_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def summary_line(report: Report) -> str:
    """The one-line JSON summary a benchmark ends with (CONVENTIONS: table, then one JSON line)."""
    pass_at_k = round(report.pass_at_k.rate, 4) if report.pass_at_k else None
    return json.dumps(
        {
            "dataset": report.config.dataset,
            "problems": report.problems,
            "accuracy": round(report.accuracy.rate, 4),
            "pass_at_k": pass_at_k,
            "cells_mean": round(report.tool_use.cells_per_trajectory.mean, 3),
            "error_rate": round(report.tool_use.status_rates["error"], 4),
        }
    )
