"""Many trajectories at once: bounded concurrency, results as they finish.

While some trajectories wait on the sandbox, the others keep the backend busy; the backend batches
whatever requests are pending — unlike the synchronous rounds of ToRA and Qwen2.5-Math evaluation
(everyone generates, then everyone executes, then repeat), which leave the model idle while cells run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def solve_all(
    problems: Sequence[str], solve_one: Callable[[int, str], Awaitable[T]], *, concurrency: int
) -> AsyncIterator[tuple[int, T]]:
    """Run ``solve_one(i, problem)`` for every problem, at most ``concurrency`` at a time, and yield
    ``(i, result)`` in completion order.  Cancelling the consumer cancels every running trajectory."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    queue = iter(enumerate(problems))
    running: dict[asyncio.Task[T], int] = {}

    def launch() -> None:
        for index, problem in queue:
            running[asyncio.ensure_future(solve_one(index, problem))] = index
            if len(running) >= concurrency:
                return

    launch()
    try:
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                index = running.pop(task)
                yield index, task.result()
            launch()
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


class RoundsBarrier:
    """Forces synchronous rounds on trajectories run by ``solve_all``: the baseline to measure against.

    Every trajectory's generation and execution calls pass through ``phase``; a call waits until
    every live trajectory is waiting too, then all executions run together, and only when none is
    left do all generations run together (so the backend sees one batch).  This is the schedule of
    ToRA and Qwen2.5-Math evaluation: no one generates while anyone executes.
    """

    def __init__(self, live: int) -> None:
        self.live = live
        self._waiting: dict[str, list[asyncio.Future[None]]] = {"execute": [], "generate": []}

    async def phase(self, kind: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[kind].append(future)
        self._release()
        await future

    def leave(self) -> None:
        """A trajectory ended: it no longer holds the others back."""
        self.live -= 1
        self._release()

    def _release(self) -> None:
        waiting = sum(len(w) for w in self._waiting.values())
        if waiting == 0 or waiting < self.live:
            return
        kind = "execute" if self._waiting["execute"] else "generate"
        ready, self._waiting[kind] = self._waiting[kind], []
        for future in ready:
            if not future.done():
                future.set_result(None)
