"""Scale a benchmark run out over Ray: problems sharded across actors, one run folder, one writer.

Owns: ``ShardWorker`` (a Ray actor with its own backend and sandbox ``KernelPool``, solving chunks of
problems with ``benchmarks.run.solve_problems`` and returning their records) and
``run_benchmark_ray`` (``runtime.batch.drive.drive_ray`` with these workers: the same ``RunFolder``
contract as ``run_benchmark``, so its records equal a single-process run's).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from benchmarks.records import Problem, RunConfig
from benchmarks.run import RunSummary, benchmark_folder, live_progress, solve_problems, summarize
from runtime.backends.base import Backend
from runtime.backends.factory import BackendSpec
from runtime.batch.drive import drive_ray
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

__all__ = ["ShardWorker", "run_benchmark_ray"]


class ShardWorker:
    """One Ray worker: a backend and a kernel pool, started on the first chunk and kept."""

    def __init__(self, spec: BackendSpec, config: dict[str, Any], sandbox: dict[str, Any]) -> None:
        self.spec = spec
        self.config = RunConfig.model_validate(config)
        self.sandbox = SandboxSettings.model_validate(sandbox)
        self.backend: Backend | None = None
        self.pool: KernelPool | None = None
        self.limiter: asyncio.Semaphore | None = None
        self.lock: asyncio.Lock | None = None

    async def _start(self) -> tuple[Backend, KernelPool, asyncio.Semaphore]:
        self.lock = self.lock or asyncio.Lock()
        async with self.lock:
            if self.backend is None or self.pool is None or self.limiter is None:
                self.backend = await asyncio.to_thread(self.spec.build)
                self.pool = KernelPool(self.sandbox)
                await self.pool.__aenter__()
                self.limiter = asyncio.Semaphore(self.config.concurrency)
        return self.backend, self.pool, self.limiter

    async def run(self, problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Solve a chunk; its records as JSON-ready dicts (at most ``concurrency`` trajectories at
        once across all chunks this worker holds)."""
        backend, pool, limiter = await self._start()
        chunk = [Problem.model_validate(p) for p in problems]
        return [
            record.model_dump(mode="json")
            async for record in solve_problems(
                chunk, self.config, backend=backend, sessions=pool.session, limiter=limiter
            )
        ]

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.__aexit__(None, None, None)
        if self.backend is not None:
            await self.backend.aclose()
        self.pool = self.backend = None


def run_benchmark_ray(
    config: RunConfig,
    problems: list[Problem],
    *,
    backend: BackendSpec,
    out_dir: Path,
    address: str = "auto",
    workers: int | None = None,
    sandbox: SandboxSettings | None = None,
    progress: bool = True,
) -> RunSummary:
    """``run_benchmark`` on Ray workers (``runtime.batch.drive.drive_ray``: ``address``, ``workers``)."""
    start = time.monotonic()
    driven = drive_ray(
        benchmark_folder(out_dir),
        config,
        problems,
        worker=ShardWorker,
        backend=backend,
        chunk_size=config.concurrency,
        progress=live_progress(progress),
        address=address,
        workers=workers,
        sandbox=sandbox,
    )
    return summarize(driven.records, out_dir, resumed=driven.resumed, wall_time_s=time.monotonic() - start)
