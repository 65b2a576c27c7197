"""Direct stateful code execution: ``/v1/sessions`` for RL and agent frameworks that need a code tool.

A session leases one kernel from the app's pool for its whole life, so its cells share state.
Sessions belong to the API key that created them (another key gets 404, as if it did not exist),
count against ``max_sessions`` and ``max_sessions_per_key``, and expire after ``idle_timeout_s``
without a request: a reaper task sleeps until the earliest deadline (never polls), closes the
expired sessions and so returns their kernels (which the pool kills and replaces).  A session
that is running a cell never expires mid-cell.  Cells in one session run one at a time, in order.
A kernel that crashes or is killed mid-cell is replaced within the session, and the result says
``kernel_restarted`` (its state is gone).  Deleting a session waits for its running cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, OrderedDict
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from runtime.server.errors import Gone, NotFound, TooManyRequests, Unavailable
from runtime.server.metrics import Metrics
from runtime.server.schemas import SessionInfo
from runtime.server.settings import ServerSettings
from sandbox.pool import KernelPool, Session
from sandbox.result import ExecutionResult

logger = logging.getLogger(__name__)

_REMEMBERED_EXPIRED = 4096  # ids of expired sessions kept to answer 410 rather than 404


@dataclass(eq=False)
class ExecSession:
    id: str
    owner: str
    idle_timeout_s: float
    lease: AbstractAsyncContextManager[Session]
    sandbox: Session
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    executions: int = 0
    busy: int = 0  # requests using it now (waiting for or running a cell)
    closed: str | None = None  # why it was closed
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def info(self) -> SessionInfo:
        left = max(0.0, self.last_used + self.idle_timeout_s - time.monotonic())
        return SessionInfo(
            id=self.id,
            created_at=self.created_at,
            idle_timeout_s=self.idle_timeout_s,
            expires_at=time.time() + left,
            executions=self.executions,
        )


class SessionManager:
    def __init__(self, settings: ServerSettings, pool: KernelPool, metrics: Metrics) -> None:
        self.settings, self.pool, self.metrics = settings, pool, metrics
        self._sessions: dict[str, ExecSession] = {}
        self._reserved: Counter[str] = Counter()  # sessions being created, by owner
        self._expired: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> (owner, why)
        self._wake = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._watchers: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="session-reaper")

    # -- the API --------------------------------------------------------------------------------
    async def create(self, owner: str, idle_timeout_s: float | None) -> ExecSession:
        s = self.settings
        mine = sum(1 for x in self._sessions.values() if x.owner == owner) + self._reserved[owner]
        total = len(self._sessions) + sum(self._reserved.values())
        if mine >= s.max_sessions_per_key or total >= s.max_sessions:
            which = (
                f"API key {owner!r} holds {mine} sessions (MATHCODER_SERVER_MAX_SESSIONS_PER_KEY={s.max_sessions_per_key})"
                if mine >= s.max_sessions_per_key
                else f"{total} sessions are open (MATHCODER_SERVER_MAX_SESSIONS={s.max_sessions})"
            )
            raise TooManyRequests(
                f"{which}; delete one or let it expire",
                retry_after_s=s.retry_after_s,
                code="too_many_sessions",
            )
        self._reserved[owner] += 1
        try:
            lease = self.pool.session()
            try:
                sandbox = await asyncio.wait_for(lease.__aenter__(), s.session_lease_timeout_s)
            except TimeoutError:
                raise Unavailable(
                    f"no kernel became free within {s.session_lease_timeout_s} s "
                    "(MATHCODER_SERVER_SESSION_LEASE_TIMEOUT_S, MATHCODER_SANDBOX_MAX_KERNELS)",
                    code="no_kernel",
                    headers={"Retry-After": str(s.retry_after_s)},
                ) from None
        finally:
            self._reserved[owner] -= 1
            if self._reserved[owner] <= 0:
                del self._reserved[owner]
        idle = min(idle_timeout_s or s.session_idle_s, s.max_session_idle_s)
        session = ExecSession(
            id=f"sess-{uuid.uuid4().hex}", owner=owner, idle_timeout_s=idle, lease=lease, sandbox=sandbox
        )
        self._sessions[session.id] = session
        self._changed()
        logger.info("session %s opened for %s (idle timeout %.1f s)", session.id, owner, idle)
        return session

    def get(self, session_id: str, owner: str) -> ExecSession:
        session = self._sessions.get(session_id)
        if session is not None and session.owner == owner:
            return session
        gone = self._expired.get(session_id)
        if gone is not None and gone[0] == owner:
            raise Gone(f"session {session_id!r} is gone: {gone[1]}", code="session_gone", param="id")
        raise NotFound(f"no session {session_id!r}", code="session_not_found", param="id")

    async def execute(
        self, session_id: str, owner: str, code: str, timeout_s: float | None
    ) -> tuple[ExecSession, ExecutionResult]:
        session = self.get(session_id, owner)
        limit = min(timeout_s or self.pool.settings.cell_timeout_s, self.settings.max_cell_timeout_s)
        session.busy += 1
        try:
            async with session.lock:
                if session.closed is not None:
                    raise Gone(f"session {session_id!r} is gone: {session.closed}", code="session_gone")
                result = await session.sandbox.execute(code, timeout_s=limit)
                session.executions += 1
        finally:
            session.busy -= 1
            session.last_used = time.monotonic()
            self._wake.set()
        self.metrics.executions.labels(result.status.value, "session").inc()
        return session, result

    async def delete(self, session_id: str, owner: str) -> None:
        await self._close(self.get(session_id, owner), "deleted by its owner")

    # -- closing --------------------------------------------------------------------------------
    async def _close(self, session: ExecSession, reason: str, *, wait: bool = True) -> None:
        if session.closed is not None:
            return
        session.closed = reason
        self._sessions.pop(session.id, None)
        self._expired[session.id] = (session.owner, reason)
        while len(self._expired) > _REMEMBERED_EXPIRED:
            self._expired.popitem(last=False)
        # A running cell finishes first: killing its kernel under it would make the session lease
        # a replacement after it was released.
        if wait:
            async with session.lock:
                await session.lease.__aexit__(None, None, None)
        else:
            await session.lease.__aexit__(None, None, None)
        self._changed()
        logger.info("session %s closed: %s", session.id, reason)

    async def _reap(self) -> None:
        while True:
            now = time.monotonic()
            next_deadline: float | None = None
            for session in list(self._sessions.values()):
                if session.busy or session.lock.locked():
                    continue  # its request will wake us when it is done
                deadline = session.last_used + session.idle_timeout_s
                if deadline <= now:
                    await self._close(session, f"expired after {session.idle_timeout_s:g} s idle")
                else:
                    next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
            self._wake.clear()
            timeout = None if next_deadline is None else next_deadline - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def close_all(self) -> None:
        """At shutdown: stop the reaper and release every session's kernel."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.wait({self._reaper})
        for session in list(self._sessions.values()):
            await self._close(session, "the server shut down", wait=False)

    def _changed(self) -> None:
        self._wake.set()
        watchers, self._watchers = self._watchers, []
        for future in watchers:
            if not future.done():
                future.set_result(None)

    async def wait_closed(self, session_id: str) -> None:
        """Wait until the session is closed (for monitors and tests)."""
        while session_id in self._sessions:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(future)
            await future
