"""Running a benchmark: problems in, one graded ``ProblemRecord`` per problem out, resumable.

Owns: solving problems with the agent loop (``solve_problems``: k samples per problem, bounded
concurrency over all trajectories, grading off the event loop, majority vote, pass@k), the run
folder (``RunFolder``: ``config.json`` written first and checked on resume; ``records.jsonl``
appended one full line at a time with flush + fsync, a torn last line from a crash dropped on
resume, rewritten in problem order when the run completes) and ``run_benchmark``, which ties them
together with a live progress bar.  ``benchmarks.ray_run`` reuses ``solve_problems`` and
``RunFolder`` to shard a run across Ray workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.grading import is_equivalent
from benchmarks.records import Problem, ProblemRecord, RunConfig, SampleRecord
from benchmarks.settings import BenchmarkSettings
from runtime.backends.base import Backend, SamplingParams
from runtime.backends.scripted import ScriptedBackend, Step
from runtime.consistency import majority_vote
from runtime.events import ErrorEvent, FinalAnswer
from runtime.loop import LoopLimits, SessionFactory, run_trajectory
from runtime.prompts import get_preset
from runtime.scheduler import solve_all

__all__ = [
    "RESUMABLE_FIELDS",
    "LiveProgress",
    "RunError",
    "RunFolder",
    "RunSummary",
    "check_problems",
    "run_benchmark",
    "scripted_backend",
    "solve_problems",
    "summarize",
]

RESUMABLE_FIELDS = frozenset({"concurrency"})
"""Config fields a resumed run may change: they do not change what a record contains."""


class RunError(RuntimeError):
    """A run folder that cannot be (re)used as asked; the message says why and what to do."""


class RunSummary(BaseModel):
    """The outcome of a run (all of its records, resumed ones included)."""

    out_dir: str
    problems: int
    resumed: int = 0
    correct: int
    pass_at_k: int
    accuracy: float
    pass_at_k_rate: float
    errors: int
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
    """Solve every problem (``config.samples`` trajectories each, seeds 0..k-1), at most
    ``config.concurrency`` trajectories at once; yield each problem's record when its last sample is
    graded.  ``limiter``, if given, bounds trajectories across several concurrent calls too."""
    preset = get_preset(config.preset)
    limits = LoopLimits(max_rounds=config.max_rounds, max_tokens=config.max_tokens)
    timeout_s = BenchmarkSettings().grading_timeout_s
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
        last: FinalAnswer | ErrorEvent | None = None
        async with limiter if limiter is not None else contextlib.nullcontext():
            async for event in run_trajectory(
                problem.question, backend=backend, sessions=sessions, preset=preset, limits=limits,
                sampling=SamplingParams(temperature=config.temperature, seed=j), model=config.model,
                source={"dataset": problem.dataset, "split": problem.split, "id": problem.id, "sample": j},
            ):  # fmt: skip
                if isinstance(event, FinalAnswer | ErrorEvent):
                    last = event
        assert last is not None
        trace = last.trace
        answer = trace.final_answer if trace is not None else None
        correct = answer is not None and await asyncio.to_thread(equal, answer, problem.answer)
        error = last.message if isinstance(last, ErrorEvent) else None
        return p, j, SampleRecord(answer=answer, correct=correct, trace=trace, error=error)

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
            id=problem.id, dataset=problem.dataset, split=problem.split, question=problem.question,
            reference=problem.answer, meta=problem.meta, answer=vote.answer,
            correct=any(s.correct for s in ordered if s.answer == vote.answer),
            pass_at_k=any(s.correct for s in ordered), samples=ordered,
            wall_time_s=round(time.monotonic() - started.pop(p), 3),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------- run folder


class RunFolder:
    """``config.json`` + ``records.jsonl`` of one run; only one process may write to it at a time."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.config_path = self.out_dir / "config.json"
        self.records_path = self.out_dir / "records.jsonl"

    def prepare(self, config: RunConfig) -> dict[str, ProblemRecord]:
        """Write the config (a new run) or check it against the saved one (a resume); return the
        records already finished, by id, after dropping a torn last line."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():
            saved = RunConfig.model_validate_json(self.config_path.read_text(encoding="utf-8"))
            old, new = saved.model_dump(), config.model_dump()
            diff = [
                f"{k}: {old[k]!r} -> {new[k]!r}"
                for k in old
                if old[k] != new[k] and k not in RESUMABLE_FIELDS
            ]
            if diff:
                raise RunError(
                    f"{self.out_dir} holds a run with a different config ({'; '.join(diff)}); "
                    "use another --out folder, or repeat the saved options to resume it"
                )
        _write_atomic(self.config_path, config.model_dump_json(indent=2) + "\n")
        return {r.id: r for r in self._read()}

    def _read(self) -> list[ProblemRecord]:
        if not self.records_path.exists():
            return []
        data = self.records_path.read_bytes()
        records: list[ProblemRecord] = []
        pos = good_end = 0
        while (newline := data.find(b"\n", pos)) != -1:  # bytes after the last newline: a torn write
            line = data[pos:newline]
            if line.strip():
                try:
                    records.append(ProblemRecord.model_validate_json(line))
                except ValueError as exc:
                    if data[newline + 1 :].strip():
                        raise RunError(
                            f"{self.records_path}: corrupt record before the last line ({exc}); "
                            "move the file away to start over"
                        ) from exc
                    break  # a torn last line that happens to end in a newline
            pos = good_end = newline + 1
        if good_end < len(data):
            with self.records_path.open("r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise RunError(f"{self.records_path} holds duplicate ids; it was written by two runs at once")
        return records

    def append(self, record: ProblemRecord) -> None:
        """Append one record as one full line, flushed and fsynced before returning."""
        line = record.model_dump_json().encode("utf-8") + b"\n"
        with self.records_path.open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def finalize(self, records: Sequence[ProblemRecord]) -> None:
        """Rewrite ``records.jsonl`` in problem order (atomically: a crash leaves the old or the new)."""
        _write_atomic(self.records_path, "".join(r.model_dump_json() + "\n" for r in records))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- the run


def check_problems(problems: Sequence[Problem], done: dict[str, ProblemRecord], out_dir: Path) -> None:
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise RunError("the problems have duplicate ids; give each problem a unique id")
    stray = sorted(set(done) - set(ids))
    if stray:
        raise RunError(
            f"{out_dir} has records for problems not in this run (e.g. {stray[0]!r}); the data changed"
        )


def summarize(
    records: Sequence[ProblemRecord], out_dir: Path, *, resumed: int, wall_time_s: float
) -> RunSummary:
    n = len(records)
    correct = sum(r.correct for r in records)
    passed = sum(r.pass_at_k for r in records)
    traces = [s.trace for r in records for s in r.samples if s.trace is not None]
    return RunSummary(
        out_dir=str(out_dir), problems=n, resumed=resumed, correct=correct, pass_at_k=passed,
        accuracy=correct / n if n else 0.0, pass_at_k_rate=passed / n if n else 0.0,
        errors=sum(s.error is not None for r in records for s in r.samples),
        tool_calls=sum(t.metadata.usage.cells for t in traces),
        completion_tokens=sum(t.metadata.usage.completion_tokens for t in traces),
        wall_time_s=round(wall_time_s, 3),
    )  # fmt: skip


class LiveProgress:
    """A rich progress bar: problems done, running accuracy, problems/s and tokens/s."""

    def __init__(self, total: int, done: int, correct: int, enabled: bool) -> None:
        self.correct, self.done, self.new, self.tokens = correct, done, 0, 0
        self.start = time.monotonic()
        self.bar = Progress(
            TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), disable=not enabled, transient=False,
        )  # fmt: skip
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
    folder = RunFolder(out_dir)
    done = folder.prepare(config)
    check_problems(problems, done, out_dir)
    resumed = len(done)
    todo = [p for p in problems if p.id not in done]
    with LiveProgress(len(problems), resumed, sum(r.correct for r in done.values()), progress) as bar:
        async for record in solve_problems(todo, config, backend=backend, sessions=sessions):
            await asyncio.to_thread(folder.append, record)
            done[record.id] = record
            bar.update(record)
    records = [done[p.id] for p in problems]
    await asyncio.to_thread(folder.finalize, records)
    return summarize(records, out_dir, resumed=resumed, wall_time_s=time.monotonic() - start)


def scripted_backend(script: dict[str, list[Any]]) -> ScriptedBackend:
    """A replay backend from ``{problem text: [step text | {text, eos, delay_s}]}`` (tests, dry runs)."""
    return ScriptedBackend(
        {q: [s if isinstance(s, str) else Step(**s) for s in steps] for q, steps in script.items()}
    )
