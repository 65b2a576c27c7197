"""The experiment's two plots, drawn from ``docs/results.json`` and the kept bench reports.

``python -m training.results_plots`` writes them next to the results file:

- ``results-accuracy.png``: accuracy per run on each evaluation set, with the 95% Wilson interval
  the entry holds (a difference inside overlapping intervals is not a finding);
- ``results-cells.png``: GSM8K accuracy against the number of cells a trajectory ran, one line per
  run, each point sized by how many trajectories ran that many cells.  It comes from the kept
  report's ``tool_use.accuracy_by_cells`` (``docs/measurements/gsm8k-NAME-report.json``), which
  every run has even where its per-problem outcomes were not kept.

No number is typed here: both plots read only what ``training.results`` validated.  matplotlib
(already the bench reports' plotting library) draws them headless.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.summary import Rate
from training.results import (
    MEASUREMENTS,
    REPORT_SUFFIX,
    RESULTS_PATH,
    EvidenceError,
    ExperimentResults,
    RunResult,
    load_report,
    load_results,
)

ACCURACY_PNG, CELLS_PNG = "results-accuracy.png", "results-cells.png"
DATASETS = ("gsm8k", "asdiv", "mawps")
ROLE_ORDER = {"base": 0, "control": 1, "code": 2}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, ax: Any, path: Path) -> None:
    # Beside the axes: inside, it covers the tallest bars' labels or the curves' first points.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def in_order(results: ExperimentResults) -> list[RunResult]:
    """Base, control, then the code runs, each group in the order the file lists it."""
    return sorted(results.runs, key=lambda run: ROLE_ORDER[run.role])


def accuracy_by_cells(results: ExperimentResults, folder: Path = MEASUREMENTS) -> dict[str, dict[int, Rate]]:
    """Run name -> cells run -> GSM8K accuracy of the trajectories that ran that many (kept reports)."""
    curves: dict[str, dict[int, Rate]] = {}
    for run in in_order(results):
        kept = folder / f"gsm8k-{run.name}{REPORT_SUFFIX}"
        if "gsm8k" in run.eval and kept.is_file():
            by_cells = load_report(kept).tool_use.accuracy_by_cells
            curves[run.name] = {int(cells): rate for cells, rate in by_cells.items() if rate.total}
    return curves


def plot_accuracy(results: ExperimentResults, path: Path) -> None:
    plt = _pyplot()
    runs = in_order(results)
    datasets = [d for d in DATASETS if any(d in run.eval for run in runs)]
    width = 0.8 / max(1, len(datasets))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(runs) + 2), 4.2))
    for k, dataset in enumerate(datasets):
        xs, ys, lows, highs, labels = [], [], [], [], []
        for i, run in enumerate(runs):
            result = run.eval.get(dataset)
            if result is None:
                continue
            xs.append(i + (k - (len(datasets) - 1) / 2) * width)
            ys.append(result.accuracy * 100)
            lows.append((result.accuracy - result.ci95[0]) * 100)
            highs.append((result.ci95[1] - result.accuracy) * 100)
            labels.append(f"{result.correct}/{result.n}")
        ax.bar(xs, ys, width, yerr=[lows, highs], capsize=3, label=dataset)
        for x, y, high, label in zip(xs, ys, highs, labels, strict=True):
            # Above the interval's top, where the error bar does not cross it.
            ax.annotate(
                label, (x, y + high), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
            )
    ax.set_xticks(range(len(runs)), [f"{run.name}\n({run.role})" for run in runs])
    ax.set_ylabel("accuracy (%), 95% interval")
    ax.set_title("Accuracy per run (greedy)")
    _save(fig, ax, path)


def plot_cells(curves: dict[str, dict[int, Rate]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    largest = max((r.total for curve in curves.values() for r in curve.values()), default=1)
    for name, curve in curves.items():
        cells = sorted(curve)
        ys = [curve[c].rate * 100 for c in cells]
        (line,) = ax.plot(cells, ys, marker="", label=name)
        sizes = [15 + 300 * curve[c].total / largest for c in cells]
        ax.scatter(cells, ys, s=sizes, color=line.get_color(), alpha=0.6)
    ax.set_xlabel("cells the trajectory ran (the loop's limit is the last point)")
    ax.set_ylabel("GSM8K accuracy (%)")
    ax.set_title("Accuracy vs cells (point area: trajectories)")
    _save(fig, ax, path)


def write_plots(results: ExperimentResults, out: Path, folder: Path = MEASUREMENTS) -> list[Path]:
    """Both plots into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(results, out / ACCURACY_PNG)
    plot_cells(accuracy_by_cells(results, folder), out / CELLS_PNG)
    return [out / ACCURACY_PNG, out / CELLS_PNG]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw the experiment's plots (PNG) from docs/results.json.")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    parser.add_argument("--folder", type=Path, default=MEASUREMENTS, help="Where the kept reports are.")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH.parent, help="Where the PNGs go.")
    args = parser.parse_args(argv)
    try:
        written = write_plots(load_results(args.results), args.out, args.folder)
    except (EvidenceError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
