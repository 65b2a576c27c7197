"""Admission of trajectories: a bounded FIFO queue in front of a fixed number of running slots.

A request is admitted or refused at once, before any response is sent, so a refusal is a real
status code: 429 with Retry-After when ``max_queued`` requests already wait, or when the caller's
key already has ``per_key_concurrency`` requests running or waiting.  An admitted request holds a
``Ticket``; it waits for a running slot (streams send keep-alives meanwhile), runs, and releases.
A ticket cancelled while it waits leaves the queue; one released while running hands its slot to
the oldest waiter.  ``stats`` feed ``/metrics``; ``wait_until`` lets monitors and tests wait for a
state instead of polling it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from runtime.server.errors import TooManyRequests


@dataclass(frozen=True)
class AdmissionStats:
    running: int
    queued: int
    admitted: int
    refused: int


class Ticket:
    """One admitted request's claim on a running slot.

    ``acquire`` waits until the slot is granted; ``release`` (idempotent) gives the slot back or
    leaves the queue, whichever applies — also for a ticket whose task was cancelled before it
    ever ran, which is why owners release from a done-callback rather than from the task's body.
    """

    def __init__(self, admission: Admission, key: str) -> None:
        self._admission = admission
        self.key = key
        self.waiter: asyncio.Future[None] | None = None
        self.granted = False  # holds a running slot
        self.released = False

    async def acquire(self) -> None:
        if not self.granted:
            assert self.waiter is not None and not self.released, "a released ticket cannot be used again"
            await self.waiter

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission._release(self)


class Admission:
    def __init__(self, max_running: int, max_queued: int, per_key: int, retry_after_s: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.per_key = per_key
        self.retry_after_s = retry_after_s
        self._running = 0
        self._queue: deque[Ticket] = deque()
        self._by_key: Counter[str] = Counter()
        self._admitted = 0
        self._refused = 0
        self._watchers: list[asyncio.Future[None]] = []

    def stats(self) -> AdmissionStats:
        return AdmissionStats(
            running=self._running, queued=len(self._queue), admitted=self._admitted, refused=self._refused
        )

    def admit(self, key: str) -> Ticket:
        """A ticket for ``key``, running at once if a slot is free; raises ``TooManyRequests``."""
        if self._by_key[key] >= self.per_key:
            self._refused += 1
            raise TooManyRequests(
                f"API key {key!r} already has {self._by_key[key]} requests running or queued "
                f"(the limit is {self.per_key}, MATHCODER_SERVER_PER_KEY_CONCURRENCY)",
                retry_after_s=self.retry_after_s,
                code="key_concurrency_limit",
            )
        ticket = Ticket(self, key)
        if self._running < self.max_running and not self._queue:
            self._running += 1
            ticket.granted = True
        elif len(self._queue) >= self.max_queued:
            self._refused += 1
            raise TooManyRequests(
                f"the server is busy: {self._running} trajectories run and {len(self._queue)} wait "
                f"(MATHCODER_SERVER_MAX_QUEUED); retry later",
                retry_after_s=self.retry_after_s,
                code="queue_full",
            )
        else:
            ticket.waiter = asyncio.get_running_loop().create_future()
            self._queue.append(ticket)
        self._by_key[key] += 1
        self._admitted += 1
        self._changed()
        return ticket

    def _release(self, ticket: Ticket) -> None:
        self._by_key[ticket.key] -= 1
        if self._by_key[ticket.key] <= 0:
            del self._by_key[ticket.key]
        if ticket.granted:
            ticket.granted = False
            self._running -= 1
            while self._queue and self._running < self.max_running:
                nxt = self._queue.popleft()
                assert nxt.waiter is not None
                if not nxt.waiter.done():  # a cancelled waiter is skipped; its owner releases it
                    self._running += 1
                    nxt.granted = True
                    nxt.waiter.set_result(None)
        elif ticket in self._queue:
            self._queue.remove(ticket)
        self._changed()

    def _changed(self) -> None:
        watchers, self._watchers = self._watchers, []
        for future in watchers:
            if not future.done():
                future.set_result(None)

    async def wait_until(self, predicate: Callable[[AdmissionStats], bool]) -> AdmissionStats:
        while not predicate(stats := self.stats()):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(future)
            await future
        return stats
