"""Running a generation mode over seed problems: resumable, bounded, with progress, or on Ray.

Owns ``run_generation``: seeds in, one ``SeedOutcome`` per seed appended (fsynced) to the run
folder's ``outcomes.jsonl`` as each finishes — through the drivers the benchmark harness uses too
(``runtime.batch.drive``: ``drive_local``, ``drive_ray``) — then the data set files written from all
outcomes (``training.generate.dataset``).  A killed run re-run with the same options skips the
seeds it finished.  The ``concept-graph`` mode runs in two phases, each resumable: concept
extraction over the seeds (``concepts/``), then question synthesis over random-walk samples.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.records import Problem
from benchmarks.settings import BenchmarkSettings
from runtime.backends.base import Backend, BackendError
from runtime.backends.factory import BackendSpec
from runtime.batch.drive import drive_local, drive_ray
from runtime.batch.folder import RunError, RunFolder
from runtime.failures import InfrastructureFailure, retrying
from runtime.loop import SessionFactory
from runtime.scheduler import solve_all
from sandbox.errors import SandboxError
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings
from training.generate.context import GenContext
from training.generate.dataset import write_dataset
from training.generate.dedupe import ContaminationIndex
from training.generate.gsm8k_calc import ConversionError
from training.generate.modes import get_mode
from training.generate.records import GenerateConfig, Rejection, SeedOutcome

RESUMABLE_FIELDS = frozenset({"concurrency"})
R = TypeVar("R", bound=BaseModel)


class GenProgress:
    """A rich progress bar: seeds done, examples kept, seed yield and seeds/s."""

    def __init__(self, label: str, total: int, done: Sequence[BaseModel], enabled: bool) -> None:
        self.start, self.new = time.monotonic(), 0
        self.done = len(done)
        self.kept = sum(len(getattr(o, "records", ())) for o in done)
        self.productive = sum(bool(getattr(o, "records", True)) for o in done)
        self.bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            disable=not enabled,
        )
        self.task = self.bar.add_task(label, total=total, completed=self.done, stats=self._stats())

    def _stats(self) -> str:
        rate = self.new / max(time.monotonic() - self.start, 1e-9)
        share = self.productive / self.done if self.done else 0.0
        return f"kept {self.kept}  yield {share:.1%}  {rate:.2f} seeds/s"

    def update(self, outcome: BaseModel) -> None:
        records = getattr(outcome, "records", None)
        self.done, self.new = self.done + 1, self.new + 1
        self.kept += len(records) if records is not None else 0
        self.productive += bool(records) if records is not None else 1
        self.bar.update(self.task, advance=1, stats=self._stats())

    def __enter__(self) -> GenProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def guarded(
    mode: str, fn: Callable[[Problem, GenContext], Awaitable[SeedOutcome]], ctx: GenContext
) -> Callable[[Problem], Awaitable[SeedOutcome]]:
    """``fn`` with a seed's unreadable data turned into a logged rejection instead of a dead run, and
    an infrastructure failure (``runtime.failures``: the sandbox or the teacher failed, not the data)
    retried with back-off, then recorded as such for a resume to try again.  A sandbox or teacher
    that fails every seed still stops the run: after ``BROKEN_AFTER`` seeds in a row fail so, the
    next raises (the failed seeds are recorded; a resume redoes them)."""
    settings = BenchmarkSettings()  # the harness's retry policy: one for every run of trajectories
    streak = [0]

    async def once(seed: Problem) -> tuple[SeedOutcome, bool]:
        """The seed's outcome, and whether it is worth another try."""
        t0 = time.monotonic()
        try:
            return await fn(seed, ctx), False
        except (ConversionError, ValueError, KeyError) as exc:
            rejection = Rejection(
                seed_id=seed.id, mode=mode, reason="error", detail=f"{type(exc).__name__}: {exc}"
            )
            return SeedOutcome(
                id=seed.id, rejections=[rejection], candidates=1, wall_time_s=time.monotonic() - t0
            ), False
        except (BackendError, SandboxError, InfrastructureFailure) as exc:  # runtime.failures' errors
            failed = SeedOutcome(
                id=seed.id,
                wall_time_s=time.monotonic() - t0,
                infrastructure_failure=f"{type(exc).__name__}: {exc}"[:500],
            )
            return failed, not isinstance(exc, InfrastructureFailure)  # that one was retried already

    async def run(seed: Problem) -> SeedOutcome:
        if streak[0] >= BROKEN_AFTER:
            raise RunError(
                f"{streak[0]} seeds in a row failed for a reason outside the data (the last: see "
                "outcomes.jsonl); fix the sandbox or the teacher and run the same command again"
            )
        (outcome, _), attempts = await retrying(
            lambda: once(seed),
            lambda tried: tried[1],
            retries=settings.infra_retries,
            backoff_s=settings.retry_backoff_s,
        )
        streak[0] = streak[0] + 1 if outcome.infrastructure_failure is not None else 0
        return outcome.model_copy(update={"attempts": attempts}) if attempts > 1 else outcome

    return run


BROKEN_AFTER = 20
"""Seeds in a row that end on an infrastructure failure before a generation run stops."""


async def map_seeds(
    folder: RunFolder[Any, R],
    config: BaseModel,
    seeds: Sequence[Problem],
    fn: Callable[[Problem], Awaitable[R]],
    *,
    concurrency: int,
    label: str,
    progress: bool,
) -> list[R]:
    """``fn`` over ``seeds`` into ``folder`` (resuming it), at most ``concurrency`` at once; the
    results in seed order."""

    async def results(todo: list[Problem]) -> AsyncIterator[R]:
        async def one(index: int, _: str) -> R:
            return await fn(todo[index])

        async for _, result in solve_all([s.id for s in todo], one, concurrency=concurrency):
            yield result

    def bar(total: int, done: list[R]) -> GenProgress:
        return GenProgress(label, total, done, progress)

    return (await drive_local(folder, config, seeds, results, bar)).records


def outcome_folder(out_dir: Path) -> RunFolder[GenerateConfig, SeedOutcome]:
    return RunFolder(
        out_dir,
        GenerateConfig,
        SeedOutcome,
        records_name="outcomes.jsonl",
        resumable=RESUMABLE_FIELDS,
        redo=lambda outcome: outcome.infrastructure_failure is not None,
    )


async def run_generation(
    config: GenerateConfig,
    seeds: Sequence[Problem],
    *,
    sessions: SessionFactory,
    backend: Backend | None,
    out_dir: Path,
    progress: bool = True,
    merge_with: Sequence[Path] = (),
    contamination: ContaminationIndex | None = None,
    sft_preset: str = "tir-sft",
) -> dict[str, Any]:
    """Run ``config.mode`` over ``seeds`` into ``out_dir`` and write the data set; return its card."""
    start = time.monotonic()
    spec = get_mode(config.mode)
    ctx = GenContext(config, sessions, backend, limiter=asyncio.Semaphore(config.concurrency))
    if spec.teacher:
        _ = ctx.teacher  # fail before any work when the teacher is missing
    extra: dict[str, Any] = {}
    if config.mode == "concept-graph":
        seeds, extra = await _concept_walks(config, seeds, ctx, out_dir, progress)
    fn = guarded(config.mode, spec.load(), ctx)
    fresh: set[str] = set()

    async def one(seed: Problem) -> SeedOutcome:
        outcome = await fn(seed)
        fresh.add(outcome.id)
        return outcome

    outcomes = await map_seeds(
        outcome_folder(out_dir),
        config,
        seeds,
        one,
        concurrency=config.concurrency,
        label=config.mode,
        progress=progress,
    )
    return await asyncio.to_thread(
        write_dataset,
        out_dir,
        config,
        outcomes,
        wall_time_s=time.monotonic() - start,
        merge_with=merge_with,
        contamination=contamination,
        sft_preset=sft_preset,
        extra=extra,
        fresh=fresh,
    )


async def _concept_walks(
    config: GenerateConfig, seeds: Sequence[Problem], ctx: GenContext, out_dir: Path, progress: bool
) -> tuple[list[Problem], dict[str, Any]]:
    """Phase 1 of concept-graph: extract concepts from every seed (resumable in ``concepts/``),
    build the graph and draw the walks that phase 2 turns into questions."""
    from training.generate import concept_graph as cg

    folder: RunFolder[GenerateConfig, cg.ConceptRecord] = RunFolder(
        out_dir / "concepts", GenerateConfig, cg.ConceptRecord, resumable=RESUMABLE_FIELDS
    )

    async def extract(seed: Problem) -> cg.ConceptRecord:
        return await cg.extract(seed, ctx)

    records = await map_seeds(
        folder, config, seeds, extract, concurrency=config.concurrency, label="concepts", progress=progress
    )
    graph = cg.build_graph(records)
    walks = cg.walk_seeds(graph, len(seeds) * config.variants, ctx)
    failed = sum(r.error is not None for r in records)
    return walks, {"concept_graph": {**graph.stats(), "extraction_failures": failed, "walks": len(walks)}}


# ---------------------------------------------------------------------------------------------- Ray


class GenWorker:
    """One Ray worker: its own sandbox pool (and teacher, if the mode needs one), kept across chunks."""

    def __init__(self, spec: BackendSpec | None, config: dict[str, Any], sandbox: dict[str, Any]) -> None:
        self.spec = spec
        self.config = GenerateConfig.model_validate(config)
        self.sandbox = SandboxSettings.model_validate(sandbox)
        self.ctx: GenContext | None = None
        self.pool: KernelPool | None = None
        self.lock: asyncio.Lock | None = None

    async def _start(self) -> GenContext:
        self.lock = self.lock or asyncio.Lock()
        async with self.lock:
            if self.ctx is None:
                backend = None if self.spec is None else await asyncio.to_thread(self.spec.build)
                self.pool = KernelPool(self.sandbox)
                await self.pool.__aenter__()
                limiter = asyncio.Semaphore(self.config.concurrency)
                self.ctx = GenContext(self.config, self.pool.session, backend, limiter=limiter)
        return self.ctx

    async def run(self, seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ctx = await self._start()
        fn = guarded(self.config.mode, get_mode(self.config.mode).load(), ctx)
        outcomes = await asyncio.gather(*(fn(Problem.model_validate(s)) for s in seeds))
        return [o.model_dump(mode="json") for o in outcomes]

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.__aexit__(None, None, None)
        if self.ctx is not None and self.ctx.backend is not None:
            await self.ctx.backend.aclose()
        self.pool = self.ctx = None


def run_generation_ray(
    config: GenerateConfig,
    seeds: Sequence[Problem],
    *,
    backend: BackendSpec | None,
    out_dir: Path,
    address: str = "auto",
    workers: int | None = None,
    sandbox: SandboxSettings | None = None,
    progress: bool = True,
    merge_with: Sequence[Path] = (),
    contamination: ContaminationIndex | None = None,
    sft_preset: str = "tir-sft",
) -> dict[str, Any]:
    """``run_generation`` with seeds sharded over Ray workers; the driver alone writes the folder.
    (``concept-graph`` needs the whole graph in one place: run it without Ray.)"""
    if config.mode == "concept-graph":
        raise ValueError("concept-graph runs in one process (its graph spans all seeds); leave out --ray")
    start = time.monotonic()
    driven = drive_ray(
        outcome_folder(out_dir),
        config,
        seeds,
        worker=GenWorker,
        backend=backend,
        chunk_size=config.concurrency,
        progress=lambda total, done: GenProgress(config.mode, total, done, progress),
        address=address,
        workers=workers,
        sandbox=sandbox,
    )
    outcomes, fresh = driven.records, driven.fresh
    return write_dataset(
        out_dir,
        config,
        outcomes,
        wall_time_s=time.monotonic() - start,
        merge_with=merge_with,
        contamination=contamination,
        sft_preset=sft_preset,
        fresh=fresh,
    )
