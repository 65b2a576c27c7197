"""Subcommands of the benchmark subsystem: ``mathcoder grade``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.settings import BenchmarkSettings


def grade(
    pred: Annotated[
        str | None, typer.Option(help="A predicted answer, or model text to extract it from.")
    ] = None,
    ref: Annotated[str | None, typer.Option(help="The reference answer.")] = None,
    file: Annotated[
        Path | None, typer.Option(help="A JSONL file of predictions to grade instead of --pred/--ref.")
    ] = None,
    pred_field: Annotated[
        str, typer.Option(help="Field of --file rows that holds the prediction.")
    ] = "prediction",
    ref_field: Annotated[str, typer.Option(help="Field of --file rows that holds the reference.")] = "answer",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Decide whether a prediction equals a reference (exit 0 if it does, 1 if not), or grade a file."""
    from benchmarks.grading import GradingInputError, grade_jsonl
    from benchmarks.grading import grade as grade_one

    settings = BenchmarkSettings()
    if file is not None:
        if pred is not None or ref is not None:
            raise typer.BadParameter("give either --file or --pred/--ref, not both")
        try:
            report = grade_jsonl(
                file, pred_field=pred_field, ref_field=ref_field, timeout_s=settings.grading_timeout_s
            )
        except (GradingInputError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if as_json:
            typer.echo(report.model_dump_json(indent=2))
            return
        table = Table(title=str(file))
        for column in ("problems", "correct", "accuracy"):
            table.add_column(column, justify="right")
        table.add_row(str(report.total), str(report.correct), f"{report.accuracy:.2%}")
        Console().print(table)
        return
    if pred is None or ref is None:
        raise typer.BadParameter("--pred and --ref are both required (or give --file)")
    result = grade_one(pred, ref, timeout_s=settings.grading_timeout_s)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        verdict = "equal" if result.correct else "not equal"
        typer.echo(f"{verdict}: extracted {result.extracted!r} (rule: {result.rule}) vs reference {ref!r}")
    raise typer.Exit(0 if result.correct else 1)


def register(app: typer.Typer) -> None:
    app.command("grade")(grade)
