"""What a generation mode may use: the sandbox, the teacher, the grader, and seeded randomness.

A mode is a function ``async (seed, ctx) -> SeedOutcome``; it gets everything through ``GenContext``
so the same mode runs in one process, under Ray, or in a test with a scripted teacher.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass, field

from benchmarks.records import Problem, RunConfig, SampleRecord
from benchmarks.run import solve_problems
from runtime.backends.base import Backend, CompletionRequest, SamplingParams
from runtime.failures import InfrastructureFailure
from runtime.grading import is_equivalent
from runtime.loop import SessionFactory
from training.generate.records import GenerateConfig


class TeacherRequired(RuntimeError):
    """A mode that needs a teacher model ran without a backend."""


@dataclass
class GenContext:
    config: GenerateConfig
    sessions: SessionFactory
    backend: Backend | None = None
    # Bounds trajectories and teacher calls across all seeds in flight (config.concurrency).
    limiter: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))
    grading_timeout_s: float = 5.0

    def rng(self, *key: object) -> random.Random:
        """A generator that depends only on the run seed and ``key`` (e.g. the seed id): the same
        choice on a resume, on another Ray worker, or in another process."""
        text = "\x1f".join(map(str, (self.config.seed, *key)))
        return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))

    def sampling_seed(self, *key: object) -> int:
        return self.rng("sampling", *key).randrange(2**31)

    @property
    def teacher(self) -> Backend:
        if self.backend is None:
            raise TeacherRequired(
                f"mode {self.config.mode!r} needs a teacher model: pass --backend "
                "(transformers for the local default model, openai with --base-url for a server)"
            )
        return self.backend

    async def equal(self, a: str, b: str) -> bool:
        """Grader equivalence, off the event loop."""
        return await asyncio.to_thread(is_equivalent, a, b, timeout_s=self.grading_timeout_s)

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        key: tuple[object, ...],
        stop: tuple[str, ...] = (),
    ) -> str:
        """One teacher chat turn (rephrase, statement rewrite, topic extraction, ...), seeded by ``key``."""
        teacher = self.teacher
        request = CompletionRequest(
            prompt=teacher.render_chat(messages),
            stop=stop,
            max_tokens=max_tokens,
            sampling=SamplingParams(temperature=self.config.temperature, seed=self.sampling_seed(*key)),
        )
        async with self.limiter:
            completion = await teacher.complete(request)
        return completion.text.strip()

    async def sample_traces(self, problem: Problem, samples: int | None = None) -> list[SampleRecord]:
        """``samples`` (default ``config.samples``) graded trajectories of the teacher on ``problem``,
        through the benchmark harness's solver (same loop, limits and grading)."""
        cfg = self.config
        run = RunConfig(
            dataset=problem.dataset,
            split=problem.split,
            model=cfg.model,
            backend=cfg.backend or "",
            preset=cfg.preset,
            samples=samples or cfg.samples,
            temperature=cfg.temperature,
            concurrency=cfg.concurrency,
            max_rounds=cfg.max_rounds,
            max_tokens=cfg.max_tokens,
            seed=self.sampling_seed("trajectory", problem.id),
        )
        async for record in solve_problems(
            [problem], run, backend=self.teacher, sessions=self.sessions, limiter=self.limiter
        ):
            if record.infrastructure_failure:  # the harness retried it already
                raise InfrastructureFailure(next(s.error for s in record.samples if s.error is not None))
            return record.samples
        raise AssertionError("solve_problems yielded no record")
