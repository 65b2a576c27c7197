"""The benchmark package's commands: ``mathcoder grade`` and ``mathcoder bench`` here; ``bench report``,
``bench compare`` and ``export`` from ``benchmarks.harness_cli``.  Exposed as ``app`` (a ``typer.Typer``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.harness_cli import register as register_reports
from benchmarks.records import RunConfig
from benchmarks.settings import BenchmarkSettings
from runtime.cli_options import RayAddress, RayWorkers, ReplayScript, ShowProgress, options_from, validated


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
    from runtime.grading import GradingInputError, grade_jsonl
    from runtime.grading import grade as grade_one

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


@options_from(
    RunConfig,
    fields=[
        "split",
        "model",
        "backend",
        "adapter",
        "preset",
        "limit",
        "samples",
        "seed",
        "concurrency",
        "max_rounds",
        "max_tokens",
        "wall_time_s",
        "question_field",
        "answer_field",
    ],
)
def bench(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option(help="Run folder: config.json + records.jsonl; an existing one resumes.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help=RunConfig.model_fields["dataset"].description)] = None,
    base_url: Annotated[str | None, typer.Option(help="Server URL for --backend openai.")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature; default 0 for one sample, 0.7 for several.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Any JSONL file of problems instead of --dataset.")
    ] = None,
    ray: RayAddress = None,
    ray_workers: RayWorkers = None,
    script: ReplayScript = None,
    progress: ShowProgress = True,
    *,
    given: dict[str, Any],
) -> None:
    """Run a benchmark: solve every problem, grade, vote; resumable; prints a table and a JSON line."""
    import asyncio
    import json

    from benchmarks.datasets import DatasetError, load_jsonl, load_problems
    from benchmarks.ray_run import run_benchmark_ray
    from benchmarks.run import RunError, RunSummary, run_benchmark
    from runtime.adapter import model_preset
    from runtime.backends.factory import BackendChoiceError, BackendSpec
    from runtime.settings import RuntimeSettings
    from sandbox.errors import SandboxError
    from sandbox.pool import KernelPool
    from sandbox.settings import SandboxSettings

    if ctx.invoked_subcommand is not None:
        return  # ``mathcoder bench report|compare ...``: the subcommand does the work
    if out is None:
        raise typer.BadParameter("--out RUN_FOLDER is required")
    if data is None and dataset is None:
        raise typer.BadParameter("give --dataset NAME or --data FILE.jsonl")
    label = dataset or (data.stem if data is not None else "")
    data_file = str(data.resolve()) if data is not None else None
    config = validated(RunConfig, given, dataset=label, data_file=data_file)
    temp = temperature if temperature is not None else (0.0 if config.samples == 1 else 0.7)
    # The adapter and the model's own preset unless named, resolved now so that the run folder records them.
    runtime = RuntimeSettings.with_adapter(config.adapter)
    preset = config.preset or model_preset(runtime, config.model)
    config = validated(
        RunConfig, config.model_dump(), temperature=temp, preset=preset, adapter=runtime.adapter
    )
    model, backend, split, limit = config.model, config.backend, config.split, config.limit
    samples, concurrency = config.samples, config.concurrency
    try:
        spec = BackendSpec(
            kind=backend,
            model=model,
            base_url=base_url,
            script=json.loads(script.read_text(encoding="utf-8")) if script is not None else None,
            settings=runtime,
        )
    except BackendChoiceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backend") from exc
    try:
        if data is not None:
            problems = load_jsonl(
                data, config.question_field, config.answer_field, dataset=label, split=split, limit=limit
            )
        else:
            problems = load_problems(
                label, split, data_dir=BenchmarkSettings().resolve_data_dir(), limit=limit
            )
    except (DatasetError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    async def single() -> RunSummary:
        model_backend = await asyncio.to_thread(spec.build)
        sandbox = SandboxSettings()
        sandbox = sandbox.model_copy(update={"pool_size": min(sandbox.pool_size, concurrency)})
        try:
            async with KernelPool(sandbox) as pool:
                return await run_benchmark(
                    config,
                    problems,
                    backend=model_backend,
                    sessions=pool.session,
                    out_dir=out,
                    progress=progress,
                )
        finally:
            await model_backend.aclose()

    try:
        if ray is not None:
            summary = run_benchmark_ray(
                config,
                problems,
                backend=spec,
                out_dir=out,
                address=ray,
                workers=ray_workers,
                progress=progress,
            )
        else:
            summary = asyncio.run(single())
    except (RunError, SandboxError, RuntimeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    table = Table(title=f"{label}/{split} ({summary.problems} problems, k={samples})")
    for column in ("accuracy", f"pass@{samples}", "correct", "errors", "tool calls", "tokens", "wall s"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{summary.accuracy:.2%}",
        f"{summary.pass_at_k_rate:.2%}",
        f"{summary.correct}/{summary.problems}",
        str(summary.errors),
        str(summary.tool_calls),
        str(summary.completion_tokens),
        f"{summary.wall_time_s:.1f}",
    )
    Console(stderr=True).print(table)
    from benchmarks.summary import write_report

    write_report(out)  # report.json, report.md and plots next to the records
    typer.echo(summary.model_dump_json())


app = typer.Typer()
"""The benchmark package's commands (``grade``, ``bench`` and its ``report``/``compare``, ``export``),
mounted by the console script."""
app.command("grade")(grade)
bench_app = typer.Typer(
    help="Run a benchmark (options below), or work with finished run folders (subcommands).",
    invoke_without_command=True,
)
bench_app.callback()(bench)
app.add_typer(bench_app, name="bench")
register_reports(app, bench_app)
