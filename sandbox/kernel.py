"""One sandboxed kernel, driven over the Jupyter protocol: start, run a cell under limits, close.

Every cell races three things: the kernel going idle (done), the kernel process exiting (crashed),
and the wall-clock limit.  At the limit the cell is interrupted by an ``interrupt_request`` on the
control channel (signals would not reach a kernel inside bubblewrap); a kernel that does not come
back within ``interrupt_grace_s`` — a C loop such as ``sum(range(10**12))`` holds the GIL and never
sees the interrupt — is killed with everything it started.  The heartbeat channel is not used: a
kernel stuck in C keeps beating, and a dead one is seen sooner through its process.

Output is captured up to ``max_capture_bytes`` per stream; the rest is dropped as it arrives, so a
cell that prints gigabytes cannot grow the host process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any, cast

from jupyter_client.asynchronous.client import AsyncKernelClient

from sandbox.errors import KernelStartError
from sandbox.launcher import KernelProcess, Launcher, make_spec
from sandbox.result import (
    DisplayOutput,
    ExecutionError,
    ExecutionResult,
    ExecutionStatus,
    ImageRef,
    strip_ansi,
)
from sandbox.settings import SandboxSettings
from sandbox.sweep import conn_dir_prefix

logger = logging.getLogger(__name__)

_IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")


StreamCallback = Callable[[str, str], None]
"""Called as ``(stream name, text)`` for each piece of stdout/stderr while a cell runs."""


@dataclass
class _Capture:
    """Accumulates one cell's iopub messages within the capture bound."""

    limit: int
    on_stream: StreamCallback | None = None
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    truncated: dict[str, bool] = field(default_factory=lambda: {"stdout": False, "stderr": False})
    outputs: list[DisplayOutput] = field(default_factory=list)
    output_bytes: int = 0
    error: ExecutionError | None = None

    def feed(self, msg: dict[str, Any]) -> bool:
        """Take one message of the cell; True once the kernel reports it idle."""
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "status":
            return bool(content.get("execution_state") == "idle")
        if kind == "stream":
            name = "stderr" if content.get("name") == "stderr" else "stdout"
            text = str(content.get("text", ""))
            self._stream(name, text)
            if self.on_stream is not None:
                self.on_stream(name, text[: self.limit])
        elif kind in ("execute_result", "display_data"):
            self._display(content.get("data", {}), is_result=kind == "execute_result")
        elif kind == "error":
            self.error = ExecutionError(
                ename=str(content.get("ename", "")),
                evalue=str(content.get("evalue", "")),
                traceback=[strip_ansi(str(t)) for t in content.get("traceback", [])][:200],
            )
        return False

    def _stream(self, name: str, text: str) -> None:
        room = self.limit - self.sizes[name]
        if room <= 0:
            self.truncated[name] = True
            return
        if len(text) > room:
            text = text[:room]
            self.truncated[name] = True
        self.sizes[name] += len(text)
        (self.stdout if name == "stdout" else self.stderr).append(text)

    def _display(self, data: dict[str, Any], *, is_result: bool) -> None:
        text = data.get("text/plain")
        if isinstance(text, str) and len(text) > self.limit:
            text = text[: self.limit]
        images = []
        for mime in _IMAGE_MIMES:
            if mime in data:
                raw = str(data[mime])
                blob = raw.encode() if mime == "image/svg+xml" else base64.b64decode(raw, validate=False)
                keep = self.output_bytes + len(raw) <= self.limit
                self.output_bytes += len(raw) if keep else 0
                images.append(
                    ImageRef(
                        mime=mime,
                        size_bytes=len(blob),
                        sha256=hashlib.sha256(blob).hexdigest(),
                        data_b64=raw if keep and mime != "image/svg+xml" else "",
                    )
                )
        self.outputs.append(
            DisplayOutput(text=text if isinstance(text, str) else None, images=images, is_result=is_result)
        )

    def result(
        self, status: ExecutionStatus, wall: float, message: str | None = None, lost: str | None = None
    ) -> ExecutionResult:
        return ExecutionResult(
            status=status,
            stdout="".join(self.stdout),
            stderr="".join(self.stderr),
            outputs=self.outputs,
            error=self.error,
            wall_time_s=wall,
            stdout_truncated=self.truncated["stdout"],
            stderr_truncated=self.truncated["stderr"],
            kernel_restarted=status in (ExecutionStatus.KILLED, ExecutionStatus.CRASHED),
            message=message,
            lost=lost,
        )


class Kernel:
    """A started kernel and the client that speaks to it.  Not shared: one session at a time."""

    def __init__(
        self, process: KernelProcess, client: AsyncKernelClient, settings: SandboxSettings, slot: int
    ):
        self.process = process
        self.client = client
        self.settings = settings
        self.slot = slot
        self.dropped = 0  # messages the host could not verify or read (see _read)
        self._exit = asyncio.ensure_future(process.wait())

    @classmethod
    async def start(cls, launcher: Launcher, settings: SandboxSettings, slot: int) -> Kernel:
        conn_dir = tempfile.mkdtemp(prefix=conn_dir_prefix(slot), dir=settings.run_dir)
        spec = make_spec(slot, Path(conn_dir), output_limit=settings.max_capture_bytes)
        try:
            process = await launcher.launch(spec)
        except OSError as exc:
            shutil.rmtree(conn_dir, ignore_errors=True)
            raise KernelStartError(f"could not launch the kernel of slot {slot}: {exc}") from exc
        except BaseException:
            shutil.rmtree(conn_dir, ignore_errors=True)
            raise
        client = AsyncKernelClient()
        client.load_connection_info(cast(Any, spec.connection))
        kernel = cls(process, client, settings, slot)
        try:
            ready = getattr(process, "ready", None)
            if ready is not None:
                await kernel._handshake(ready)
            else:
                await kernel._wait_for_ready()
        except BaseException:
            await kernel.close()
            raise
        return kernel

    def _start_failed(self, note: str) -> KernelStartError:
        if self._exit.done():
            note = self.process.death_note()
        return KernelStartError(
            f"kernel in slot {self.slot} did not start within {self.settings.start_timeout_s:g} s ({note}); "
            "raise MATHCODER_SANDBOX_START_TIMEOUT_S or check the isolation with `mathcoder sandbox run 1`"
        )

    async def _wait_for_ready(self) -> None:
        """A cold kernel: jupyter_client's ``wait_for_ready`` (it polls until the kernel answers)."""
        # No heartbeat: liveness comes from the process (the heartbeat misses kernels stuck in C and
        # reports young kernels dead), and wait_for_ready would consult it.
        self.client.start_channels(hb=False)
        timeout = self.settings.start_timeout_s
        ready = asyncio.ensure_future(self.client.wait_for_ready(timeout=timeout))
        done, _ = await asyncio.wait(
            {ready, self._exit}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done or ready.exception() is not None:
            ready.cancel()
            if ready.done() and not ready.cancelled() and ready.exception() is not None:
                raise self._start_failed(f"{type(ready.exception()).__name__}: {ready.exception()}")
            raise self._start_failed("no answer")

    async def _handshake(self, ready: asyncio.Future[Any]) -> None:
        """A forked kernel: told ready by its zygote (sockets bound), so connect and ask once, no polling.

        Ready means a ``kernel_info_reply`` on the shell channel and ipykernel's ``iopub_welcome``,
        which proves the iopub subscription is in place (else a first cell's output could be lost).
        """
        timeout = self.settings.start_timeout_s
        done, _ = await asyncio.wait(
            {ready, self._exit}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done or ready.exception() is not None:
            raise self._start_failed("no answer" if ready not in done else str(ready.exception()))
        self.client.start_channels(hb=False)
        sent = {self.client.kernel_info()}
        got = {"kernel_info_reply": False, "iopub": False}

        async def reply() -> None:
            while True:
                try:
                    msg = await self.client.get_shell_msg(timeout=1.0)
                except Empty:  # not expected; asking again costs nothing
                    sent.add(self.client.kernel_info())
                    continue
                if msg["parent_header"].get("msg_id") in sent:
                    got["kernel_info_reply"] = True
                    return

        async def subscribed() -> None:  # any iopub message proves the subscription; the welcome comes first
            while True:
                msg = await self.client.get_iopub_msg()
                if msg["msg_type"] == "iopub_welcome" or msg["parent_header"].get("msg_id") in sent:
                    got["iopub"] = True
                    return

        answered: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(reply(), subscribed()))
        try:
            finished, _ = await asyncio.wait(
                {answered, self._exit}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if answered not in finished:
                missing = ", ".join(k for k, v in got.items() if not v)
                tail = getattr(self.process, "log_tail", lambda: "")()
                raise self._start_failed(
                    f"no {missing} after {len(sent)} kernel_info requests; log: {tail!r}"
                )
            answered.result()
        finally:
            answered.cancel()
            with contextlib.suppress(BaseException):
                await answered

    @property
    def alive(self) -> bool:
        return not self._exit.done()

    def interrupt(self) -> None:
        msg = self.client.session.msg("interrupt_request", content={})
        self.client.control_channel.send(msg)

    async def execute(
        self, code: str, timeout_s: float | None = None, on_stream: StreamCallback | None = None
    ) -> ExecutionResult:
        """Run one cell; the result's status says how it ended (this only raises on cancellation)."""
        timeout = self.settings.cell_timeout_s if timeout_s is None else timeout_s
        capture = _Capture(limit=self.settings.max_capture_bytes, on_stream=on_stream)
        start = time.perf_counter()
        if not self.alive:
            note = self.process.death_note()
            return capture.result(ExecutionStatus.CRASHED, 0.0, note, f"the kernel died while idle ({note})")
        msg_id = self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        pump = asyncio.ensure_future(self._pump(msg_id, capture))
        try:
            done, _ = await asyncio.wait(
                {pump, self._exit}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if pump in done:
                pump.result()
                status = ExecutionStatus.ERROR if capture.error is not None else ExecutionStatus.OK
                return capture.result(status, time.perf_counter() - start)
            if self._exit.done():
                return capture.result(
                    ExecutionStatus.CRASHED,
                    time.perf_counter() - start,
                    self.process.death_note(),
                    self.process.lost_reason(),
                )
            # Past the limit: interrupt, then kill if the kernel stays deaf.
            self.interrupt()
            done, _ = await asyncio.wait(
                {pump, self._exit},
                timeout=self.settings.interrupt_grace_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if pump in done:
                capture.error = None  # the KeyboardInterrupt we caused is not the code's error
                return capture.result(
                    ExecutionStatus.TIMEOUT,
                    time.perf_counter() - start,
                    f"TimeoutError: the cell ran past the {timeout:g} s limit and was interrupted",
                )
            self.process.kill()
            return capture.result(
                ExecutionStatus.KILLED,
                time.perf_counter() - start,
                f"TimeoutError: the cell ran past the {timeout:g} s limit and ignored the interrupt; "
                "the kernel was restarted and its state is lost",
            )
        finally:
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    async def _pump(self, msg_id: str, capture: _Capture) -> None:
        while True:
            msg = await self._read(self.client.get_iopub_msg)
            if msg["parent_header"].get("msg_id") == msg_id and capture.feed(msg):
                break
        # The shell reply comes with the idle status; reading it keeps the shell queue empty.
        while True:
            reply = await self._read(self.client.get_shell_msg)
            if reply["parent_header"].get("msg_id") == msg_id:
                return

    async def _read(self, get: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """The next message the host can verify and read.  Code in the kernel can write to the
        kernel's own sockets: a frame with a wrong signature, torn or of the wrong shape is dropped
        (logged), never allowed to fail the cell's call -- the HMAC key stays the host's check."""
        while True:
            try:
                msg = await get()
                if isinstance(msg.get("parent_header"), dict) and isinstance(msg.get("content"), dict):
                    return msg
                problem = "a message without a parent header or content"
            except (ValueError, TypeError, KeyError) as exc:  # what jupyter_client raises on such frames
                problem = f"{type(exc).__name__}: {str(exc)[:120]}"
            self.dropped += 1
            if self.dropped <= 3:
                logger.warning(
                    "kernel in slot %d: dropped a message the host cannot read (%s)", self.slot, problem
                )

    async def close(self) -> None:
        """Kill the kernel with everything it started and remove its files (idempotent)."""
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        await self.process.close()
        if not self._exit.done():
            self._exit.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._exit
