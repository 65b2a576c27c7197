"""Server-Sent Events: framing, keep-alives, and a response that notices when its client leaves.

``EventStream`` reads items from a queue (a trajectory job's events, ending with ``None``) and
writes what its ``Framer`` makes of each.  When nothing came for ``keepalive_s`` it sends an SSE
comment (``: keep-alive``), which clients ignore and proxies take as traffic.  A watcher task
listens for the client's disconnect *while* the stream waits, not only when it writes, and posts
a marker into the same queue, so a client that leaves stops the work behind the stream at once
(one task per stream, none per frame).  ``on_close`` runs however the stream ends (finished,
client gone, server cancelled): that is where the work is cancelled and its kernel returned.
End markers are the framer's: ``/v1/solve`` ends with ``event: done``, the OpenAI API with
``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

KEEPALIVE = b": keep-alive\n\n"
T_contra = TypeVar("T_contra", contravariant=True)
T = TypeVar("T")


def frame(data: str, event: str | None = None) -> bytes:
    """One SSE frame; ``data`` must be a single line (compact JSON is)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


class Framer(Protocol[T_contra]):
    """Turns a stream's items into SSE bytes: a head, zero or more frames per item, the end."""

    def start(self) -> bytes: ...

    def frame(self, item: T_contra) -> bytes: ...

    def end(self) -> bytes: ...


class _ClientLeft:
    pass


_CLIENT_LEFT = _ClientLeft()


async def _watch_disconnect(receive: Receive, queue: asyncio.Queue[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    queue.put_nowait(_CLIENT_LEFT)


class EventStream(Response, Generic[T]):
    media_type = "text/event-stream"

    def __init__(
        self,
        source: asyncio.Queue[T | None],
        framer: Framer[T],
        *,
        keepalive_s: float,
        on_close: Callable[[bool], Awaitable[None]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        # No body and so no Content-Length: the stream is chunked.
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self.source = source
        self.framer = framer
        self.keepalive_s = keepalive_s
        self.on_close = on_close  # called with True when the client left before the end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        queue: asyncio.Queue[Any] = self.source
        watcher = asyncio.ensure_future(_watch_disconnect(receive, queue))
        client_left = False
        try:
            head = self.framer.start()
            if head:
                await send({"type": "http.response.body", "body": head, "more_body": True})
            while True:
                try:
                    async with asyncio.timeout(self.keepalive_s):
                        item = await queue.get()  # cancel-safe: a timeout loses no item
                except TimeoutError:
                    await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                    continue
                if item is _CLIENT_LEFT:
                    client_left = True
                    return
                chunk = self.framer.end() if item is None else self.framer.frame(item)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": item is not None})
                if item is None:
                    if not chunk:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
        finally:
            watcher.cancel()
            await asyncio.wait({watcher})
            # Stop the work (a no-op when it is over) before the handler returns, even when this
            # task is being cancelled.
            await self.on_close(client_left)
