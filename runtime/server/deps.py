"""What request handlers get from the app: its services (typed) and the caller's principal.

Authentication itself happens in the request middleware, before the body is read, so an
unauthenticated caller costs no parsing; ``needs`` hands the principal the middleware found to
the handler and declares the bearer scheme in the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runtime.backends.base import Backend
from runtime.server.auth import KeyStore, Principal, Scope
from runtime.server.limits import Admission
from runtime.server.metrics import Metrics
from runtime.server.services.sessions import SessionManager
from runtime.server.services.solver import Solver
from runtime.server.settings import ServerSettings
from sandbox.pool import KernelPool


@dataclass
class Services:
    """Everything the app runs with; on ``app.state.services``.  ``solver`` and ``sessions`` exist
    from start-up on (the backend may be loaded only then)."""

    settings: ServerSettings
    keys: KeyStore
    metrics: Metrics
    admission: Admission
    pool: KernelPool
    backend: Backend | None
    started: bool = False
    draining: bool = False
    _solver: Solver | None = field(default=None, repr=False)
    _sessions: SessionManager | None = field(default=None, repr=False)

    def attach(self, solver: Solver, sessions: SessionManager) -> None:
        """Start-up hands over the parts that need the loaded backend and a running loop."""
        self._solver, self._sessions = solver, sessions

    def sessions_open(self) -> int:
        return len(self._sessions) if self._sessions is not None else 0

    @property
    def solver(self) -> Solver:
        assert self._solver is not None, "the app has not started"
        return self._solver

    @property
    def sessions(self) -> SessionManager:
        assert self._sessions is not None, "the app has not started"
        return self._sessions


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def needs(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency returning the caller, who the middleware found to hold ``scope``."""

    async def principal(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        found: Principal | None = request.scope.get("state", {}).get("principal")
        if found is None:  # the middleware authenticates every /v1 route; this one is misrouted
            found = services(request).keys.identify(request.headers.get("authorization"))
        return KeyStore.require(found, scope)

    return principal
