"""The warm pool: kernels started ahead of need, leased one per session, never reused.

A session (one solution attempt) leases a kernel for its whole life, so its cells share state.
On release the kernel is killed with everything it started and a fresh one takes its place in the
background — state cannot leak from one session to the next, because nothing survives.  (A
"clean reset" inside a live kernel cannot be verified: a cell can patch a module, start a thread
or leave a process, so the pool recycles every kernel after one session.)

Leases are served first come, first served; at most ``max_kernels`` kernels exist and at most
``max_waiting`` sessions wait (one more gets ``PoolFull``).  A cancelled waiter leaves the queue
without taking a kernel; a cancelled session's kernel is killed like any other.  A kernel that dies
or is killed in the middle of a session is replaced within the session (the result says
``kernel_restarted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sandbox.errors import PoolClosed, PoolFull
from sandbox.kernel import Kernel, StreamCallback
from sandbox.launcher import Launcher
from sandbox.result import ExecutionResult, ExecutionStatus
from sandbox.settings import SandboxSettings
from sandbox.sweep import sweep

logger = logging.getLogger(__name__)

START_TRIES = 3
"""Kernel starts that must fail in a row before a waiting session is failed with the last error."""


@dataclass
class PoolStats:
    idle: int
    leased: int
    starting: int
    waiting: int
    started: int
    restarts: int
    start_failures: int


class Session:
    """One leased kernel, and the cells run in it.  Obtain through ``KernelPool.session()``."""

    def __init__(self, pool: KernelPool, kernel: Kernel) -> None:
        self._pool = pool
        self.kernel = kernel
        self.restarts = 0
        self.cells = 0  # cells run in this session: a kernel that dies after one takes state with it

    async def execute(
        self, code: str, timeout_s: float | None = None, on_stream: StreamCallback | None = None
    ) -> ExecutionResult:
        """Run a cell in this session's kernel; a dead kernel is replaced first.  When that kernel
        had run cells, their state is gone for no fault of this cell: the result says so in ``lost``."""
        lost = None
        if not self.kernel.alive:
            if self.cells:
                lost = (
                    f"the session's kernel died while idle ({self.kernel.process.death_note()}); this cell "
                    "ran in a new kernel, without the session's earlier state"
                )
            await self._replace()
        self.cells += 1
        result = await self.kernel.execute(code, timeout_s, on_stream)
        if lost is not None and result.lost is None:
            result = result.model_copy(update={"lost": lost})
        if result.status in (ExecutionStatus.KILLED, ExecutionStatus.CRASHED):
            await self._replace()
        return result

    async def _replace(self) -> None:
        old, self.kernel = self.kernel, await self._pool._lease()
        self.restarts += 1
        self._pool._restarts += 1
        self._pool._retire(old)


class KernelPool:
    """Warm kernels for sessions.  ``async with KernelPool(settings) as pool: async with pool.session() as s:``"""

    def __init__(self, settings: SandboxSettings, launcher: Launcher | None = None) -> None:
        self.settings = settings
        if launcher is None:
            launcher = _default_launcher(settings)
        self.launcher = launcher
        self._idle: deque[Kernel] = deque()
        self._waiters: deque[asyncio.Future[Kernel]] = deque()
        self._leased: set[Kernel] = set()
        self._starting = 0
        self._free_slots = list(range(settings.max_kernels - 1, -1, -1))
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._started = 0
        self._restarts = 0
        self._start_failures = 0
        self._failing = 0  # kernel starts that failed in a row
        self._settled: list[asyncio.Future[None]] = []  # resolved when no kernel is starting
        self._watchers: list[asyncio.Future[None]] = []  # resolved at the next change of stats()

    async def __aenter__(self) -> KernelPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self, *, wait: bool = True) -> None:
        """Begin warming ``pool_size`` kernels; with ``wait``, return once they are ready.  First,
        remove what hosts that died before closing their pools left (``sandbox.sweep``)."""
        if self.settings.backend == "local" and not self._started:
            await sweep(self.settings.run_dir)
        self._refill()
        if wait and self._starting:
            settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._settled.append(settled)
            await settled

    def _changed(self) -> None:
        watchers, self._watchers = self._watchers, []
        for future in watchers:
            if not future.done():
                future.set_result(None)

    async def wait_until(self, predicate: Callable[[PoolStats], bool]) -> PoolStats:
        """Wait until ``predicate(self.stats())`` holds (for monitors, readiness checks and tests)."""
        while not predicate(stats := self.stats()):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(future)
            await future
        return stats

    def stats(self) -> PoolStats:
        return PoolStats(
            idle=len(self._idle),
            leased=len(self._leased),
            starting=self._starting,
            waiting=len(self._waiters),
            started=self._started,
            restarts=self._restarts,
            start_failures=self._start_failures,
        )

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        kernel = await self._lease()
        session = Session(self, kernel)
        try:
            yield session
        finally:
            self._retire(session.kernel)

    # -- leasing ----------------------------------------------------------------------------------
    async def _lease(self) -> Kernel:
        if self._closed:
            raise PoolClosed("the kernel pool is shut down")
        while self._idle and not self._waiters:
            kernel = self._idle.popleft()
            if kernel.alive:
                self._leased.add(kernel)
                self._refill()
                self._changed()
                return kernel
            self._spawn(self._close(kernel))
        if len(self._waiters) >= self.settings.max_waiting:
            raise PoolFull(
                f"{len(self._waiters)} sessions already wait for a kernel (MATHCODER_SANDBOX_MAX_WAITING); try later"
            )
        waiter: asyncio.Future[Kernel] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._refill()
        self._changed()
        try:
            kernel = await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._changed()
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give(waiter.result())  # handed over just as we were cancelled: pass it on
            raise
        return kernel

    def _give(self, kernel: Kernel) -> None:
        """A ready kernel goes to the longest-waiting session, else to the idle queue."""
        self._changed()
        self._leased.discard(kernel)
        if self._closed or not kernel.alive:
            self._spawn(self._close(kernel))
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._leased.add(kernel)
                waiter.set_result(kernel)
                return
        self._idle.append(kernel)

    def _retire(self, kernel: Kernel) -> None:
        self._changed()
        self._leased.discard(kernel)
        self._closing.add(self._spawn(self._close(kernel)))
        self._refill()

    async def drain(self) -> None:
        """Wait until every kernel retired so far is closed (its processes and files gone)."""
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    # -- starting and stopping kernels ------------------------------------------------------------
    def _refill(self) -> None:
        if self._closed:
            return
        alive = len(self._idle) + len(self._leased) + self._starting
        wanted = self.settings.pool_size + len(self._waiters) - len(self._idle) - self._starting
        while wanted > 0 and alive < self.settings.max_kernels and self._free_slots:
            slot = self._free_slots.pop()
            self._starting += 1
            alive += 1
            wanted -= 1
            self._spawn(self._start_one(slot))

    async def _start_one(self, slot: int) -> None:
        started = time.perf_counter()
        try:
            kernel = await Kernel.start(self.launcher, self.settings, slot)
        except Exception as exc:
            self._start_done()
            self._free_slots.append(slot)
            self._start_failures += 1
            self._failing += 1
            logger.error("kernel start failed (%d in a row): %s", self._failing, exc)
            # One failed start (a kernel killed as it started) is tried again for the waiters; a
            # sandbox that keeps failing must not leave them hanging: it fails the oldest one.
            if self._failing < START_TRIES:
                self._refill()
            elif self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        self._start_done()
        self._failing = 0
        self._started += 1
        logger.debug("kernel %d ready in %.2f s", slot, time.perf_counter() - started)
        self._give(kernel)

    def _start_done(self) -> None:
        self._changed()
        self._starting -= 1
        if self._starting == 0:
            settled, self._settled = self._settled, []
            for future in settled:
                if not future.done():
                    future.set_result(None)

    async def _close(self, kernel: Kernel) -> None:
        try:
            await kernel.close()
        finally:
            self._free_slots.append(kernel.slot)
            self._refill()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._closing.discard)
        return task

    async def shutdown(self) -> None:
        """Refuse new sessions, fail waiters, kill every kernel (leased ones too), wait until all are gone."""
        self._closed = True
        for future in self._settled:
            if not future.done():
                future.set_result(None)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed("the kernel pool is shut down"))
        for kernel in [*self._idle, *self._leased]:
            self._spawn(self._close(kernel))
        self._idle.clear()
        self._leased.clear()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        aclose = getattr(self.launcher, "aclose", None)
        if aclose is not None:
            await aclose()


def _default_launcher(settings: SandboxSettings) -> Launcher:
    if settings.backend == "docker":
        from sandbox.docker_backend import DockerLauncher

        return DockerLauncher(settings)
    from sandbox.local import LocalLauncher

    if settings.kernel_start == "fork":
        from sandbox.zygote import ZygoteLauncher

        return ZygoteLauncher(settings)
    return LocalLauncher(settings)
