"""``mathcoder generate MODE``: produce a training data set (traces, SFT view, card) in a run folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown

from runtime.cli_options import RayAddress, RayWorkers, ReplayScript, ShowProgress, options_from, validated
from training.generate.modes import MODES
from training.generate.records import GenerateConfig

_MODES_HELP = "; ".join(f"{m.name}: {m.help}" for m in MODES.values())


def _contamination_index(names: list[str]) -> Any:
    from benchmarks.datasets import DatasetError, load_problems
    from training.generate.dedupe import ContaminationIndex

    questions: list[str] = []
    for name in names:
        dataset, _, split = name.partition(":")
        try:
            questions += [p.question for p in load_problems(dataset, split or "test")]
        except DatasetError as exc:
            typer.echo(f"warning: not decontaminating against {name}: {exc}", err=True)
    return ContaminationIndex(questions) if questions else None


def _id_field(path: Path) -> str | None:
    """``"id"`` when the file's rows carry their own ids (provenance then names them), else None."""
    if not path.is_file():
        return None  # load_jsonl says the file is missing
    with path.open(encoding="utf-8") as lines:
        first = next((line for line in lines if line.strip()), "{}")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return None  # load_jsonl reports the bad line with its number
    return "id" if isinstance(row, dict) and "id" in row else None


@options_from(
    GenerateConfig,
    fields=[
        "dataset",
        "split",
        "limit",
        "seed",
        "keep_per_seed",
        "variants",
        "backend",
        "model",
        "base_url",
        "adapter",
        "preset",
        "max_rounds",
        "max_tokens",
        "concurrency",
    ],
)
def generate(
    mode: Annotated[str, typer.Argument(help=f"The generation mode. {_MODES_HELP}.")],
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/generate/<mode>).")] = None,
    data: Annotated[Path | None, typer.Option(help="Seed problems from this JSONL instead.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Trajectories per question (teacher modes).")] = 4,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, help="Default 0.7 with samples > 1, else 0.")
    ] = None,
    self_verification: Annotated[
        bool, typer.Option(help="backward: also self-verification questions (needs --backend).")
    ] = False,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="concept-graph: share of samples that must agree.")
    ] = 0.5,
    merge_with: Annotated[
        list[Path] | None, typer.Option(help="Data set folders to merge into this one (self-train).")
    ] = None,
    decontaminate: Annotated[
        str, typer.Option(help="Drop questions sharing a 13-gram with these test sets ('' for none).")
    ] = "gsm8k:test,math:test",
    sft_preset: Annotated[
        str, typer.Option(help="Preset whose system prompt the SFT view renders.")
    ] = "tir-sft",
    ray: RayAddress = None,
    ray_workers: RayWorkers = None,
    script: ReplayScript = None,
    progress: ShowProgress = True,
    *,
    given: dict[str, Any],
) -> None:
    """Generate training data: seeds in, validated code-interleaved traces out (resumable)."""
    from benchmarks.datasets import DatasetError, load_jsonl, load_problems
    from runtime.adapter import FALLBACK_PRESET, model_preset
    from runtime.backends.factory import BackendChoiceError, BackendSpec
    from runtime.batch.folder import RunError
    from runtime.settings import RuntimeSettings
    from sandbox.errors import SandboxError
    from sandbox.pool import KernelPool
    from sandbox.settings import SandboxSettings
    from training.generate.context import TeacherRequired
    from training.generate.runner import run_generation, run_generation_ray

    if mode not in MODES:
        raise typer.BadParameter(
            f"unknown mode {mode!r}; choose one of {', '.join(MODES)}", param_hint="MODE"
        )
    out = out or Path("runs/generate") / mode
    options: dict[str, Any] = {}
    if self_verification:
        options["self_verification"] = True
    if mode == "concept-graph":
        options["min_agreement"] = min_agreement
    temp = temperature if temperature is not None else (0.7 if samples > 1 else 0.0)
    more = {"dataset": data.stem, "data_file": str(data.resolve())} if data is not None else {}
    config = validated(
        GenerateConfig, given, mode=mode, samples=samples, temperature=temp, options=options, **more
    )
    runtime = None
    if config.backend is not None:
        # As `mathcoder bench`: the adapter and the teacher's own preset unless named, resolved now so
        # that the run folder records them (self-train samples the model being trained this way).
        runtime = RuntimeSettings.with_adapter(config.adapter)
        preset = config.preset or model_preset(runtime, config.model)
        config = validated(GenerateConfig, config.model_dump(), preset=preset, adapter=runtime.adapter)
    elif config.preset is None:
        config = validated(GenerateConfig, config.model_dump(), preset=FALLBACK_PRESET)  # unused
    dataset, split, limit, concurrency = config.dataset, config.split, config.limit, config.concurrency
    backend, model, base_url = config.backend, config.model, config.base_url
    try:
        if data is not None:
            seeds = load_jsonl(
                data,
                id_field=_id_field(data),
                dataset=data.stem,
                split=split,
                limit=limit,
                keep_solution=True,
            )
        else:
            seeds = load_problems(dataset, split, limit=limit, keep_solution=True)
    except (DatasetError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    contamination = _contamination_index([n for n in decontaminate.split(",") if n.strip()])
    spec = None
    if backend is not None:
        scripted = json.loads(script.read_text(encoding="utf-8")) if script is not None else None
        try:
            spec = BackendSpec(
                kind=backend, model=model, base_url=base_url, script=scripted, settings=runtime
            )
        except BackendChoiceError as exc:
            raise typer.BadParameter(str(exc), param_hint="--backend") from exc
    merge = list(merge_with or [])
    # What the one-process and the Ray run share.
    common: dict[str, Any] = {
        "out_dir": out,
        "progress": progress,
        "merge_with": merge,
        "contamination": contamination,
        "sft_preset": sft_preset,
    }

    async def single() -> dict[str, Any]:
        teacher = None if spec is None else await asyncio.to_thread(spec.build)
        sandbox = SandboxSettings()
        sandbox = sandbox.model_copy(update={"pool_size": min(sandbox.pool_size, concurrency)})
        try:
            async with KernelPool(sandbox) as pool:
                return await run_generation(config, seeds, sessions=pool.session, backend=teacher, **common)
        finally:
            if teacher is not None:
                await teacher.aclose()

    try:
        if ray is not None:
            card = run_generation_ray(config, seeds, backend=spec, address=ray, workers=ray_workers, **common)
        else:
            card = asyncio.run(single())
    except (RunError, SandboxError, TeacherRequired, RuntimeError, ValueError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    Console(stderr=True).print(Markdown((out / "card.md").read_text(encoding="utf-8")))
    typer.echo(json.dumps({"out": str(out), **card["counts"], "throughput": card["throughput"]}))
