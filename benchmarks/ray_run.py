"""Scale a benchmark run out over Ray: problems sharded across actors, one run folder, one writer.

Owns: ``ShardWorker`` (a Ray actor with its own backend and sandbox ``KernelPool``, solving chunks of
problems with ``benchmarks.run.solve_problems`` and returning their records) and
``run_benchmark_ray`` (the driver: same ``RunFolder`` contract as ``run_benchmark`` — config
checked, finished ids skipped, records appended and fsynced by the driver only, rewritten in problem
order at the end — so its records equal a single-process run's).

Ray is optional (``pip install ray``) and imported only here, when a Ray run starts.  Workers import
this package, so on a multi-node cluster every node needs the project installed (or a Ray
``runtime_env``); the driver sends problems, not data files.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.records import Problem, ProblemRecord, RunConfig
from benchmarks.run import (
    LiveProgress,
    RunSummary,
    benchmark_folder,
    check_problems,
    solve_problems,
    summarize,
)
from runtime.backends.base import Backend
from runtime.backends.factory import BackendSpec
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

__all__ = ["ShardWorker", "run_benchmark_ray"]


def worker_sandbox(base: SandboxSettings, index: int, concurrency: int) -> SandboxSettings:
    """Worker ``index``'s sandbox settings: its own kernel uids and socket folder, so pools on one
    host never share a uid (NPROC is counted per uid)."""
    return base.model_copy(
        update={
            "uid_base": base.uid_base + (index + 1) * base.max_kernels,
            "run_dir": base.run_dir / f"ray-worker-{index}",
            "pool_size": min(base.pool_size, concurrency),
        }
    )


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


def import_ray() -> ModuleType:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RuntimeError(
            "--ray needs Ray: pip install ray (or leave out --ray for a single process)"
        ) from exc


def dispatch(
    ray: ModuleType, actors: list[Any], chunks: deque[list[Any]], handle: Callable[[Any], None]
) -> None:
    """Feed ``chunks`` to ``actors`` (each has ``run(chunk) -> results`` and ``close()``), two in flight
    per actor so none idles between chunks; ``handle`` each result on this thread as chunks finish.
    On any error, or when done, cancel what is in flight and close and kill every actor."""
    inflight: dict[Any, Any] = {}

    def submit(actor: Any) -> None:
        if chunks:
            inflight[actor.run.remote(chunks.popleft())] = actor

    try:
        for actor in actors:
            submit(actor)
            submit(actor)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                actor = inflight.pop(ref)
                for raw in ray.get(ref):
                    handle(raw)
                submit(actor)
    finally:
        for ref in inflight:
            ray.cancel(ref, force=False)
        for actor in actors:
            with contextlib.suppress(Exception):  # a dead worker has nothing left to close
                ray.get(actor.close.remote(), timeout=60)
            ray.kill(actor)


# Backends whose model lives in the actor's own process (one replica per actor).
IN_PROCESS_MODELS = frozenset({"transformers", "vllm"})


def start_actors(
    ray: ModuleType,
    cls: type,
    backend: BackendSpec | None,
    workers: int | None,
    chunks: int,
    make_args: Callable[[int], tuple[Any, ...]],
) -> list[Any]:
    """Ray actors of ``cls``, actor ``i`` built from ``make_args(i)``, at most one per chunk.

    An actor that holds a model replica on a cluster with GPUs asks for a whole GPU, so Ray places
    one replica per GPU (and starts one actor per GPU by default); otherwise each asks for one CPU
    (one per CPU by default): a model behind a URL, or none, leaves the actors only kernels to run."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and backend is not None and backend.kind in IN_PROCESS_MODELS:
        count, options = workers or gpus, {"num_cpus": 1, "num_gpus": 1}
    else:
        count, options = workers or int(resources.get("CPU", 1)), {"num_cpus": 1}
    remote = ray.remote(**options)(cls)
    return [remote.remote(*make_args(i)) for i in range(max(1, min(count, chunks)))]


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
    """``run_benchmark`` on Ray workers.  ``address``: a cluster address, ``auto`` (the running
    cluster) or ``local`` (start one here); ignored when Ray is already initialised.  ``workers``:
    actors to start (default: one per GPU of the cluster for an in-process model, else one per CPU;
    at most one per chunk of problems)."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    start = time.monotonic()
    folder = benchmark_folder(out_dir)
    done = folder.prepare(config)
    check_problems(problems, done, out_dir)
    resumed = len(done)
    todo = [p for p in problems if p.id not in done]
    size = max(1, config.concurrency)
    chunks = deque([p.model_dump(mode="json") for p in todo[i : i + size]] for i in range(0, len(todo), size))
    base = sandbox or SandboxSettings()
    actors = start_actors(
        ray, ShardWorker, backend, workers, len(chunks),
        lambda i: (backend, config.model_dump(), worker_sandbox(base, i, size).model_dump(mode="json")),
    )  # fmt: skip

    def handle(raw: dict[str, Any]) -> None:
        record = ProblemRecord.model_validate(raw)
        folder.append(record)
        done[record.id] = record
        bar.update(record)

    with LiveProgress(len(problems), resumed, sum(r.correct for r in done.values()), progress) as bar:
        dispatch(ray, actors, chunks, handle)
    records = [done[p.id] for p in problems]
    folder.finalize(records)
    return summarize(records, out_dir, resumed=resumed, wall_time_s=time.monotonic() - start)
