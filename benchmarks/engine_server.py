"""An OpenAI-compatible completions server in front of any backend (a scripted one in tests and
fault scripts), that can fail a share of its calls on purpose.

``POST /v1/completions`` answers with the backend's completion, or with ``stream: true`` with its
pieces as SSE chunks the way vLLM sends them (the stop string left out, named in ``stop_reason``;
usage last).  It lets the real ``openai`` backend and whatever uses it (``mathcoder solve
--backend openai``, ``mathcoder bench``, a server) run against a deterministic model over real HTTP.
With ``fail_rate``, that share of calls (drawn from a seeded generator) get a 500 instead: an engine
that fails now and then, for ``benchmarks.chaos_run``.

``LiveServer`` runs any app (this one, ``mathcoder serve``'s) under a real uvicorn server on a
loopback port, in a thread with its own event loop, as a deployment would run it; its socket is
bound and listening before the thread starts, so a client's first request waits in the backlog
instead of failing, and ``start`` returns when the app's start-up is over (an event, never a sleep).
``call`` runs a coroutine on the server's loop (to wait for the pool's or a session's state).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from runtime.backends.base import Backend, Completion, CompletionRequest, SamplingParams


def _request_of(body: dict[str, Any]) -> CompletionRequest:
    return CompletionRequest(
        prompt=body["prompt"],
        max_tokens=int(body.get("max_tokens") or 256),
        stop=tuple(body.get("stop") or ()),
        sampling=SamplingParams(
            temperature=float(body.get("temperature") or 0.0),
            top_p=float(body.get("top_p") or 1.0),
            seed=body.get("seed"),
        ),
    )


def _choice(text: str, completion: Completion | None) -> dict[str, Any]:
    if completion is None:
        return {"index": 0, "text": text, "finish_reason": None}
    finish = "length" if completion.finish_reason == "length" else "stop"
    return {"index": 0, "text": text, "finish_reason": finish, "stop_reason": completion.stop}


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def openai_app(backend: Backend, *, fail_rate: float = 0.0, seed: int = 0) -> FastAPI:
    """The server; ``app.state.calls`` and ``app.state.failed`` count the calls and the failed ones."""
    app = FastAPI()
    draw = random.Random(seed)
    app.state.calls = app.state.failed = 0

    @app.post("/v1/completions")
    async def completions(http: Request) -> Response:
        try:
            body = await http.json()
        except ClientDisconnect:  # the client died mid-request (a chaos run SIGKILLs it)
            return Response(status_code=499)
        app.state.calls += 1
        if fail_rate and draw.random() < fail_rate:
            app.state.failed += 1
            return JSONResponse({"error": {"message": "failed on purpose", "type": "server_error"}}, 500)
        request = _request_of(body)
        if not body.get("stream"):
            done = await backend.complete(request)
            return JSONResponse({"choices": [_choice(done.text, done)], "usage": _usage(done)})

        async def events() -> AsyncIterator[bytes]:
            async for item in backend.stream(request):
                if isinstance(item, str):
                    chunk: dict[str, Any] = {"choices": [_choice(item, None)]}
                else:
                    chunk = {"choices": [_choice("", item)]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                    chunk = {"choices": [], "usage": _usage(item)}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


T = TypeVar("T")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.settled = threading.Event()  # start-up is over, either way
        self.shutting_down = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.settled.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.shutting_down.set()
        await super().shutdown(sockets)


class LiveServer:
    def __init__(self, app: FastAPI, *, grace_s: int = 5) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            ws="none",
            lifespan="on",
            timeout_graceful_shutdown=grace_s,
        )
        self.server = _Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"server-{self.port}", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()/stop() in the test's thread
            self.error = exc
        finally:
            self.server.settled.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def start(self, timeout_s: float = 120.0) -> LiveServer:
        self.thread.start()
        if not self.server.settled.wait(timeout_s):
            raise TimeoutError(f"the server did not start within {timeout_s} s")
        if not self.server.started:
            self.thread.join(10)
            raise RuntimeError(f"the server failed to start: {self.error!r}")
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise TimeoutError(f"the server did not stop within {timeout_s} s")
        if self.error is not None:
            raise self.error

    async def call(self, factory: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
        """Run ``factory()`` on the server's loop; await its result from the test's loop."""
        assert self.loop is not None

        async def bounded() -> T:
            return await asyncio.wait_for(factory(), timeout_s)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(bounded(), self.loop))

    @property
    def services(self) -> Any:
        return self.app.state.services
