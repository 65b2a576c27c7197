"""The app factory: ``create_app(settings)`` wires the server's parts, and nothing is global.

``create_app`` builds the services (keys, metrics, admission, and later the solver and the
session manager), registers the routes, the exception handlers (``errors.install_handlers``, the
only ones) and the request middleware, and returns the app; ``lifespan`` loads the backend if none
was given, warms the kernel pool, and on shutdown drains: new requests get 503, running
trajectories get ``shutdown_grace_s`` to finish and are then cancelled, sessions are closed, the
pool kills every kernel and the backend is closed.  The app owns the backend and pool it is given.

The request middleware, for every HTTP request: assigns the request id (a sane ``X-Request-ID``
is kept, else a new one; returned in the response header and stamped on every log record),
authenticates ``/v1`` routes before the body is read (``/v1/sessions`` needs the ``execute``
scope, the rest ``solve``), enforces the body limit (declared length at once, streamed length as
it arrives), counts and times the request by route template and status, writes one access log
record, and turns an unhandled exception into a JSON 500 with the request id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.backends.base import Backend
from runtime.server.auth import KeyStore
from runtime.server.auth import Scope as KeyScope
from runtime.server.deps import Services
from runtime.server.errors import (
    ApiError,
    PayloadTooLarge,
    Unavailable,
    error_response,
    install_handlers,
    internal_error_body,
)
from runtime.server.limits import Admission
from runtime.server.logs import request_id_from, set_request_id
from runtime.server.metrics import CONTENT_TYPE_LATEST, Metrics
from runtime.server.routes import openai_api, playground, sessions, solve
from runtime.server.schemas import Health, Readiness
from runtime.server.services.sessions import SessionManager
from runtime.server.services.solver import Solver
from runtime.server.settings import ServerSettings
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

logger = logging.getLogger(__name__)
access_log = logging.getLogger("runtime.server.access")

PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
)


class ServerStartupError(RuntimeError):
    """The server cannot serve (no kernel starts, the backend does not load); the message says why."""


def create_app(
    settings: ServerSettings | None = None, *, backend: Backend | None = None, pool: KernelPool | None = None
) -> FastAPI:
    """The server, ready for uvicorn.  ``backend``/``pool`` default to those the settings describe."""
    settings = settings or ServerSettings()
    keys = KeyStore.from_settings(settings)
    if not keys.no_auth and settings.no_auth:
        logger.warning("no_auth ignored: API keys are configured, so every request needs one")
    services = Services(
        settings=settings,
        keys=keys,
        metrics=Metrics(),
        admission=Admission(
            settings.max_running, settings.max_queued, settings.per_key_concurrency, settings.retry_after_s
        ),
        pool=pool or KernelPool(SandboxSettings()),
        backend=backend,
    )
    services.metrics.watch(
        services.pool.stats,
        services.admission.stats,
        services.sessions_open,
    )
    app = FastAPI(
        title="MathCoder Runtime",
        summary="Tool-integrated math solving: a model writes Python, a sandbox runs it.",
        version="0.1.0",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.services = services
    install_handlers(app)
    app.include_router(solve.router)
    app.include_router(openai_api.router)
    app.include_router(sessions.router)
    app.include_router(_probes)
    app.include_router(playground.router)
    app.add_middleware(RequestMiddleware, services=services)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    settings, pool = services.settings, services.pool
    solver: Solver | None = None
    sessions_: SessionManager | None = None
    try:
        if services.backend is None:
            from runtime.backends.factory import load_backend

            logger.info("loading the %s backend", settings.backend)
            services.backend = await asyncio.to_thread(
                load_backend, settings.backend, settings.model, settings.base_url, settings.runtime_settings()
            )
        await pool.start(wait=True)
        stats = pool.stats()
        if pool.settings.pool_size > 0 and stats.started == 0:
            raise ServerStartupError(
                f"the sandbox started none of its {pool.settings.pool_size} kernels ({stats.start_failures} "
                "failures, logged above); check MATHCODER_SANDBOX_ISOLATION and MATHCODER_SANDBOX_BACKEND"
            )
        solver = Solver(settings, services.backend, pool, services.admission, services.metrics)
        sessions_ = SessionManager(settings, pool, services.metrics)
        sessions_.start()
        services.attach(solver, sessions_)
        services.started = True
        logger.info("ready: model %s, %d kernels warm", services.backend.name, stats.idle)
        yield
    finally:
        services.draining = True
        if solver is not None:
            await solver.shutdown(settings.shutdown_grace_s)
        if sessions_ is not None:
            await sessions_.close_all()
        await pool.shutdown()
        if services.backend is not None:
            await services.backend.aclose()
        logger.info("shut down")


# -- probes and metrics -----------------------------------------------------------------------------
_probes = APIRouter(tags=["operations"])


@_probes.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Alive: the process answers."""
    return Health()


@_probes.get(
    "/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready."}}
)
async def readyz(request: Request) -> JSONResponse:
    """Ready: the model is loaded, the kernel pool is warm, and the server is not shutting down."""
    services: Services = request.app.state.services
    stats = services.pool.stats()
    # Kernels being started count: the pool replaces every kernel after its lease, so between
    # requests all of them may be starting, and a probe that failed then would flap.
    warm = services.pool.settings.pool_size == 0 or stats.idle + stats.leased + stats.starting > 0
    reason = None
    if not services.started:
        reason = "starting"
    elif services.draining:
        reason = "shutting down"
    elif not warm:
        reason = "no kernel is ready"
    body = Readiness(
        ready=reason is None,
        reason=reason,
        model=services.backend.name if services.backend is not None else None,
        pool=vars(stats),
    )
    return JSONResponse(body.model_dump(), status_code=200 if reason is None else 503)


@_probes.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    services: Services = request.app.state.services
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# -- the request middleware -----------------------------------------------------------------------
class RequestMiddleware:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        request_id = request_id_from(headers.get("x-request-id"))
        set_request_id(request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        response_started = False
        limit = self.services.settings.max_body_bytes
        received = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(
                        413, f"the request body exceeds {limit} bytes (MATHCODER_SERVER_MAX_BODY_BYTES)"
                    )
            return message

        try:
            refusal = self._gate(scope, headers, state)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not response_started:
                body = internal_error_body()
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": body})
            status = 500
        finally:
            elapsed = time.perf_counter() - started
            route = self._route(scope)
            self.services.metrics.observe_request(route, scope["method"], status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                principal = state.get("principal")
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "key": getattr(principal, "name", None),
                        "client": scope["client"][0] if scope.get("client") else None,
                    },
                )
            set_request_id(None)

    def _gate(self, scope: Scope, headers: Headers, state: dict[str, object]) -> ApiError | None:
        """Why the request is refused before it reaches a route, if it is."""
        path: str = scope["path"]
        if path in PUBLIC_PATHS or not path.startswith("/v1/"):
            return None
        if self.services.draining:
            return Unavailable(
                "the server is shutting down", code="shutting_down", headers={"Connection": "close"}
            )
        needed = KeyScope.EXECUTE if path.startswith("/v1/sessions") else KeyScope.SOLVE
        try:
            principal = self.services.keys.identify(headers.get("authorization"))
            state["principal"] = principal
            KeyStore.require(principal, needed)
        except ApiError as refusal:
            return refusal
        declared = headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.services.settings.max_body_bytes
        ):
            return PayloadTooLarge(
                f"the request body has {declared} bytes; the limit is {self.services.settings.max_body_bytes} "
                "(MATHCODER_SERVER_MAX_BODY_BYTES)",
                code="body_too_large",
            )
        return None

    def _route(self, scope: Scope) -> str:
        """The route template (``/v1/sessions/{session_id}``), never the raw path: bounded label values."""
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return str(route.path)
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", []):
            match, _ = candidate.matches({**scope, "type": "http"})
            if match == Match.FULL and hasattr(candidate, "path"):
                return str(candidate.path)
        return "unmatched"
