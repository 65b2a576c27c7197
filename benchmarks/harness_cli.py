"""Commands over finished run folders: ``mathcoder bench report|compare`` and ``mathcoder export``.

This module owns only the command-line surface; the work is in :mod:`benchmarks.summary`,
:mod:`benchmarks.compare` and :mod:`benchmarks.export`.  :func:`register` adds the commands to
the ``mathcoder`` app and its ``bench`` group.  Exit status 2 means the run folder or the
arguments were wrong (the message says what was found).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

RunDir = Annotated[Path, typer.Argument(help="A run folder (config.json + records.jsonl).")]


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def report(
    run: RunDir,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print report.json instead of the summary.")
    ] = False,
) -> None:
    """Write report.json, report.md and the plots into RUN, and print the headline numbers."""
    from benchmarks.summary import RunFolderError, summary_line, write_report

    try:
        result = write_report(run)
    except (RunFolderError, OSError) as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    Console().print((run / "report.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    typer.echo(summary_line(result))


def compare(
    run_a: Annotated[Path, typer.Argument(help="Run folder A (the baseline).")],
    run_b: Annotated[Path, typer.Argument(help="Run folder B (compared with A).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    max_changed: Annotated[int, typer.Option(help="Changed problems to list in the table.")] = 50,
) -> None:
    """Compare two runs problem by problem: wins, losses, McNemar's test, the problems that changed."""
    from benchmarks.compare import compare_runs, print_comparison
    from benchmarks.summary import RunFolderError

    try:
        result = compare_runs(run_a, run_b)
    except (RunFolderError, OSError) as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        print_comparison(result, max_changed=max_changed)


def export(
    run: RunDir,
    problem_id: Annotated[str, typer.Argument(help="The problem id (as in records.jsonl).")],
    ipynb: Annotated[bool, typer.Option("--ipynb/--no-ipynb", help="Write a Jupyter notebook.")] = True,
    html: Annotated[bool, typer.Option("--html", help="Also write an HTML page (nbconvert).")] = False,
    sample: Annotated[int, typer.Option(help="Which sample's trace (0-based).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Notebook path (default: RUN/<id>.ipynb).")] = None,
) -> None:
    """Write one problem's trace as a notebook that can be opened and re-run."""
    from benchmarks.export import ExportError, export_problem
    from benchmarks.summary import RunFolderError

    try:
        written = export_problem(run, problem_id, sample=sample, out=out, ipynb=ipynb, html=html)
    except (ExportError, RunFolderError, OSError) as exc:
        raise _fail(exc) from exc
    for path in written:
        typer.echo(str(path))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``export`` to ``app`` and ``report``/``compare`` to its ``bench`` group ``bench_app``."""
    bench_app.command("report")(report)
    bench_app.command("compare")(compare)
    app.command("export")(export)
