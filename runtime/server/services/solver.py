"""Trajectories behind HTTP, without HTTP: admission, and one task per trajectory (a ``Job``).

Every trajectory runs in a task of its own that waits for its admission ticket, runs
``run_trajectory`` and puts each event on the job's queue, ending with ``None``.  A response —
JSON or a stream (``runtime.server.routes``) — reads the queue; it never runs the trajectory
itself, so the job's life is explicit: a client that leaves cancels it (``run_trajectory`` then
returns its kernel to the pool), and shutdown waits for every job, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

from runtime.adapter import model_preset
from runtime.backends.base import Backend, SamplingParams
from runtime.events import ErrorEvent, Event, ExecutionFinished, FinalAnswer
from runtime.loop import LoopLimits, run_trajectory
from runtime.prompts import PromptPreset, get_preset
from runtime.server.auth import Principal
from runtime.server.errors import NotFound
from runtime.server.limits import Admission, Ticket
from runtime.server.metrics import Metrics
from runtime.server.schemas import (
    EffectiveLimits,
    RequestLimits,
    Sampling,
)
from runtime.server.settings import ServerSettings
from sandbox.pool import KernelPool

logger = logging.getLogger(__name__)

_STEP_TOKENS: int = LoopLimits.model_fields["step_tokens"].default
CLIENT_CLOSED = 499  # nginx's "client closed request": logged and counted, never seen by the client


@dataclass(eq=False)
class Job:
    """One trajectory in its own task; ``events`` ends with ``None``."""

    id: str
    principal: str
    preset: PromptPreset
    limits: EffectiveLimits
    events: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    final: FinalAnswer | ErrorEvent | None = None
    admitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    ended_at: float | None = None
    task: asyncio.Task[None] | None = None

    def timings(self) -> dict[str, float]:
        end = self.ended_at or time.monotonic()
        start = self.started_at or end
        out = {"queue_s": start - self.admitted_at, "total_s": end - self.admitted_at}
        if self.final is not None and self.final.trace is not None:
            for name in ("generate_s", "execute_s"):
                out[name] = self.final.trace.metadata.timings.get(name, 0.0)
        return out

    async def cancel(self) -> None:
        """Stop the trajectory (if still running) and wait until it is over and its kernel returned."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task})


class Solver:
    """Starts trajectory jobs against the app's backend and pool, and stops them at shutdown."""

    def __init__(
        self,
        settings: ServerSettings,
        backend: Backend,
        pool: KernelPool,
        admission: Admission,
        metrics: Metrics,
    ) -> None:
        self.settings, self.backend, self.pool = settings, backend, pool
        self.admission, self.metrics = admission, metrics
        # The model's own preset (its adapter's) when the settings name none.
        self.default_preset = settings.default_preset or model_preset(
            settings.runtime_settings(), settings.model
        )
        self.jobs: set[Job] = set()
        self._jobs_idle = asyncio.Event()
        self._jobs_idle.set()

    @property
    def model_names(self) -> list[str]:
        return [self.settings.served_model_name, self.backend.name]

    def check_model(self, name: str | None) -> str:
        """The served name; unknown names are a 404 listing the right ones (as OpenAI answers)."""
        if name is None or name in self.model_names:
            return self.settings.served_model_name
        raise NotFound(
            f"the model {name!r} is not served here; use one of {self.model_names}",
            code="model_not_found",
            param="model",
        )

    def preset(self, name: str | None) -> PromptPreset:
        return get_preset(name or self.default_preset)

    def limits(self, asked: RequestLimits) -> tuple[LoopLimits, EffectiveLimits]:
        """The request's limits clamped to the server's ceilings; unset ones take the defaults."""
        s = self.settings
        rounds = min(asked.max_rounds if asked.max_rounds is not None else s.default_rounds, s.max_rounds)
        tokens = min(asked.max_tokens or s.default_tokens, s.max_tokens)
        cell = min(asked.cell_timeout_s or self.pool.settings.cell_timeout_s, s.max_cell_timeout_s)
        wall = min(asked.wall_time_s or s.default_wall_time_s, s.max_wall_time_s)
        effective = EffectiveLimits(
            max_rounds=rounds, max_tokens=tokens, cell_timeout_s=cell, wall_time_s=wall
        )
        loop = LoopLimits(
            max_rounds=rounds,
            max_tokens=tokens,
            step_tokens=min(_STEP_TOKENS, tokens),
            cell_timeout_s=cell,
            wall_time_s=wall,
        )
        return loop, effective

    def submit(
        self,
        principal: Principal,
        problem: str,
        *,
        preset: PromptPreset,
        limits: RequestLimits,
        sampling: Sampling,
        kind: str,
    ) -> Job:
        """Admit (or raise 429) and start a job; the caller must read it to its end or cancel it."""
        loop_limits, effective = self.limits(limits)
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed)
        job = Job(id=f"{kind}-{uuid.uuid4().hex}", principal=principal.name, preset=preset, limits=effective)
        ticket = self.admission.admit(principal.name)  # last: nothing below can fail and leak it
        job.task = asyncio.create_task(self._run(job, ticket, problem, loop_limits, params))
        # Bookkeeping in a done-callback: it runs even for a task cancelled before its first step.
        job.task.add_done_callback(lambda _: self._finished(job, ticket))
        self.jobs.add(job)
        self._jobs_idle.clear()
        return job

    async def _run(
        self, job: Job, ticket: Ticket, problem: str, limits: LoopLimits, sampling: SamplingParams
    ) -> None:
        try:
            await ticket.acquire()
            job.started_at = time.monotonic()
            async for event in run_trajectory(
                problem,
                backend=self.backend,
                sessions=self.pool.session,
                preset=job.preset,
                limits=limits,
                sampling=sampling,
                model=self.settings.served_model_name,
                source={"job": job.id},
            ):
                if isinstance(event, ExecutionFinished):
                    self.metrics.executions.labels(event.result.status.value, "trajectory").inc()
                elif isinstance(event, FinalAnswer | ErrorEvent):
                    job.final = event
                    if event.trace is not None:
                        usage = event.trace.metadata.usage
                        self.metrics.tokens.inc(usage.completion_tokens)
                        self.metrics.prompt_tokens.inc(usage.prompt_tokens)
                job.events.put_nowait(event)
        except Exception as exc:  # a bug below the loop; the loop itself reports backend and sandbox failures
            logger.exception("trajectory %s failed", job.id)
            job.final = ErrorEvent(message=f"internal error ({type(exc).__name__}); see the server log")
            job.events.put_nowait(job.final)

    def _finished(self, job: Job, ticket: Ticket) -> None:
        ticket.release()
        job.ended_at = time.monotonic()
        final = job.final
        outcome = (
            "cancelled" if final is None else "error" if isinstance(final, ErrorEvent) else final.stop_reason
        )
        self.metrics.trajectories.labels(outcome).inc()
        job.events.put_nowait(None)
        self.jobs.discard(job)
        if not self.jobs:
            self._jobs_idle.set()

    async def shutdown(self, grace_s: float) -> None:
        """Let running jobs finish for up to ``grace_s``, then cancel the rest and wait for them."""
        if self.jobs:
            logger.info("waiting up to %.1f s for %d trajectories", grace_s, len(self.jobs))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._jobs_idle.wait(), grace_s)
        left = list(self.jobs)
        if left:
            logger.warning("cancelling %d trajectories at shutdown", len(left))
        await asyncio.gather(*(job.cancel() for job in left))
