"""Running a benchmark: problems in, one graded ``ProblemRecord`` per problem out, resumable.

Owns: solving problems with the agent loop (``solve_problems``: k samples per problem, bounded
concurrency over all trajectories, grading off the event loop, majority vote, pass@k) and
``run_benchmark``, which writes the records into a resumable ``runtime.batch.folder.RunFolder``
(``config.json`` + ``records.jsonl``) with a live progress bar through ``runtime.batch.drive.drive_local``;
``benchmarks.ray_run`` shards the same through ``drive_ray``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.records import Problem, ProblemRecord, RunConfig, SampleRecord
from benchmarks.settings import BenchmarkSettings
from runtime.adapter import FALLBACK_PRESET
from runtime.backends.base import Backend, SamplingParams
from runtime.batch.drive import drive_local
from runtime.batch.folder import RunError, RunFolder
from runtime.consistency import majority_vote
from runtime.events import ErrorEvent, FinalAnswer
from runtime.failures import retrying
from runtime.grading import is_equivalent
from runtime.loop import LoopLimits, SessionFactory, run_trajectory
from runtime.prompts import get_preset
from runtime.scheduler import solve_all

__all__ = [
    "RESUMABLE_FIELDS",
    "LiveProgress",
    "RunError",
    "RunFolder",
    "RunSummary",
    "benchmark_folder",
    "live_progress",
    "run_benchmark",
    "solve_problems",
    "summarize",
]

RESUMABLE_FIELDS = frozenset({"concurrency"})
"""Config fields a resumed run may change: they do not change what a record contains."""


def benchmark_folder(out_dir: Path) -> RunFolder[RunConfig, ProblemRecord]:
    """The run folder of a benchmark run (``config.json`` + ``records.jsonl``)."""
    return RunFolder(
        out_dir,
        RunConfig,
        ProblemRecord,
        resumable=RESUMABLE_FIELDS,
        redo=lambda record: record.infrastructure_failure,
    )


class RunSummary(BaseModel):
    """The outcome of a run (all of its records, resumed ones included)."""

    out_dir: str
    problems: int
    resumed: int = 0
    correct: int
    pass_at_k: int
    accuracy: float = Field(description="Correct / graded problems (infrastructure failures are not graded).")
    pass_at_k_rate: float
    errors: int = Field(description="Samples that ended on a backend or sandbox failure after their retries.")
    infrastructure_failures: list[str] = Field(
        default_factory=list,
        description="Ids of the problems not graded for that; a resumed run redoes them.",
    )
    tool_calls: int
    completion_tokens: int
    wall_time_s: float


# ------------------------------------------------------------------------------------------ solving


async def solve_problems(
    problems: Sequence[Problem],
    config: RunConfig,
    *,
    backend: Backend,
    sessions: SessionFactory,
    limiter: asyncio.Semaphore | None = None,
) -> AsyncIterator[ProblemRecord]:
    """Solve every problem (``config.samples`` trajectories each, sampling seeds ``config.seed`` + 0..k-1), at most
    ``config.concurrency`` trajectories at once; yield each problem's record when its last sample is
    graded.  ``limiter``, if given, bounds trajectories across several concurrent calls too."""
    preset = get_preset(config.preset or FALLBACK_PRESET)  # the CLI resolves the model's own first
    limits = LoopLimits(
        max_rounds=config.max_rounds, max_tokens=config.max_tokens, wall_time_s=config.wall_time_s
    )
    settings = BenchmarkSettings()
    timeout_s = settings.grading_timeout_s
    k = config.samples
    units = [(p, j) for p in range(len(problems)) for j in range(k)]
    started: dict[int, float] = {}
    finished: dict[int, dict[int, SampleRecord]] = {}

    def equal(a: str, b: str) -> bool:
        return is_equivalent(a, b, timeout_s=timeout_s)

    async def run_sample(index: int, _: str) -> tuple[int, int, SampleRecord]:
        p, j = units[index]
        problem = problems[p]
        started.setdefault(p, time.monotonic())

        async def attempt() -> FinalAnswer | ErrorEvent:
            last: FinalAnswer | ErrorEvent | None = None
            async with limiter if limiter is not None else contextlib.nullcontext():
                async for event in run_trajectory(
                    problem.question,
                    backend=backend,
                    sessions=sessions,
                    preset=preset,
                    limits=limits,
                    sampling=SamplingParams(temperature=config.temperature, seed=config.seed + j),
                    model=config.model,
                    source={
                        "dataset": problem.dataset,
                        "split": problem.split,
                        "id": problem.id,
                        "sample": j,
                    },
                ):
                    if isinstance(event, FinalAnswer | ErrorEvent):
                        last = event
            assert last is not None
            return last

        # An ErrorEvent is a backend or sandbox failure, never the model's outcome: run it again
        # (with back-off); if it still fails, the sample is recorded ungraded, for a resume to redo.
        last, attempts = await retrying(
            attempt,
            lambda event: isinstance(event, ErrorEvent),
            retries=settings.infra_retries,
            backoff_s=settings.retry_backoff_s,
        )
        if isinstance(last, ErrorEvent):
            return (
                p,
                j,
                SampleRecord(
                    answer=None, correct=False, trace=last.trace, error=last.message, attempts=attempts
                ),
            )
        trace = last.trace
        answer = trace.final_answer if trace is not None else None
        correct = answer is not None and await asyncio.to_thread(equal, answer, problem.answer)
        return p, j, SampleRecord(answer=answer, correct=correct, trace=trace, attempts=attempts)

    labels = [f"{problems[p].id}#{j}" for p, j in units]
    async for _, (p, j, sample) in solve_all(labels, run_sample, concurrency=config.concurrency):
        samples = finished.setdefault(p, {})
        samples[j] = sample
        if len(samples) < k:
            continue
        ordered = [samples[i] for i in range(k)]
        del finished[p]
        vote = await asyncio.to_thread(majority_vote, [s.answer for s in ordered], equal)
        problem = problems[p]
        yield ProblemRecord(
            id=problem.id,
            dataset=problem.dataset,
            split=problem.split,
            question=problem.question,
            reference=problem.answer,
            meta=problem.meta,
            answer=vote.answer,
            correct=any(s.correct for s in ordered if s.answer == vote.answer),
            pass_at_k=any(s.correct for s in ordered),
            samples=ordered,
            wall_time_s=round(time.monotonic() - started.pop(p), 3),
        )


# ------------------------------------------------------------------------------------------- the run


def summarize(
    records: Sequence[ProblemRecord], out_dir: Path, *, resumed: int, wall_time_s: float
) -> RunSummary:
    graded = [r for r in records if not r.infrastructure_failure]
    n = len(graded)
    correct = sum(r.correct for r in graded)
    passed = sum(r.pass_at_k for r in graded)
    traces = [s.trace for r in records for s in r.samples if s.trace is not None]
    return RunSummary(
        out_dir=str(out_dir),
        problems=len(records),
        resumed=resumed,
        correct=correct,
        pass_at_k=passed,
        accuracy=correct / n if n else 0.0,
        pass_at_k_rate=passed / n if n else 0.0,
        errors=sum(s.error is not None for r in records for s in r.samples),
        infrastructure_failures=[r.id for r in records if r.infrastructure_failure],
        tool_calls=sum(t.metadata.usage.cells for t in traces),
        completion_tokens=sum(t.metadata.usage.completion_tokens for t in traces),
        wall_time_s=round(wall_time_s, 3),
    )


class LiveProgress:
    """A rich progress bar: problems done, running accuracy, problems/s and tokens/s."""

    def __init__(self, total: int, done: int, correct: int, enabled: bool) -> None:
        self.correct, self.done, self.new, self.tokens = correct, done, 0, 0
        self.start = time.monotonic()
        self.bar = Progress(
            TextColumn("[bold]bench"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            disable=not enabled,
            transient=False,
        )
        self.task = self.bar.add_task("bench", total=total, completed=done, stats=self._stats())

    def _stats(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        acc = self.correct / self.done if self.done else 0.0
        return f"acc {acc:.1%}  {self.new / elapsed:.2f} prob/s  {self.tokens / elapsed:.0f} tok/s"

    def update(self, record: ProblemRecord) -> None:
        self.done, self.new, self.correct = self.done + 1, self.new + 1, self.correct + record.correct
        self.tokens += sum(s.trace.metadata.usage.completion_tokens for s in record.samples if s.trace)
        self.bar.update(self.task, advance=1, stats=self._stats())

    def __enter__(self) -> LiveProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


async def run_benchmark(
    config: RunConfig,
    problems: list[Problem],
    *,
    backend: Backend,
    sessions: SessionFactory,
    out_dir: Path,
    progress: bool = True,
) -> RunSummary:
    """Solve ``problems`` into ``out_dir``, skipping those a previous run of the same config finished."""
    start = time.monotonic()

    def solved(todo: list[Problem]) -> AsyncIterator[ProblemRecord]:
        return solve_problems(todo, config, backend=backend, sessions=sessions)

    driven = await drive_local(benchmark_folder(out_dir), config, problems, solved, live_progress(progress))
    return summarize(driven.records, out_dir, resumed=driven.resumed, wall_time_s=time.monotonic() - start)


def live_progress(enabled: bool) -> Callable[[int, list[ProblemRecord]], LiveProgress]:
    """The progress factory of the drivers: a ``LiveProgress`` counting the records already done."""
    return lambda total, done: LiveProgress(total, len(done), sum(r.correct for r in done), enabled)
