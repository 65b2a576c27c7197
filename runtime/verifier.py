"""A killable math-verify worker process, so that one pathological comparison cannot hang a run.

math-verify's own timeouts use ``signal.alarm``, which only works in the main thread, so they are
disabled (``None``) and comparisons run in persistent worker processes (:class:`VerifierPool`, plain
subprocesses speaking JSON lines). A comparison that runs past ``timeout_s`` gets its worker killed
(SIGTERM, then SIGKILL) and replaced on next use; it returns not-equal with ``timed_out=True``, is
logged as a warning and counted in :attr:`VerifierPool.stats`. It never raises; only a worker that
cannot start at all raises :class:`GraderUnavailableError`. No library offers a thread-safe,
killable sympy call, hence this module.

Not protected against: memory. A worker has no memory limit beyond what it can allocate in
``timeout_s``; a comparison that exhausts memory faster than that is reported as a crash.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from runtime.settings import GradingSettings

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
"""Seconds one symbolic comparison may run (same default as ``GradingSettings.grading_timeout_s``)."""

_KILL_GRACE_S = 0.5
"""Seconds a worker gets to exit after SIGTERM before SIGKILL."""

ComparisonMethod = Literal["string", "numeric", "math_verify"]


class GraderUnavailableError(RuntimeError):
    """The grading worker process could not be started (the grader is broken, not the answer)."""


class Comparison(BaseModel):
    """Outcome of comparing one prediction with one reference."""

    model_config = ConfigDict(frozen=True)

    equal: bool
    method: ComparisonMethod
    timed_out: bool = False
    error: str | None = None
    """Set when the worker raised or died; the comparison then counts as not equal."""
    elapsed_s: float = 0.0
    """Seconds spent on the math-verify worker (0 for the in-process string and numeric paths)."""


class PoolStats(BaseModel):
    """Counters of a :class:`VerifierPool` since it was created."""

    comparisons: int = 0
    timeouts: int = 0
    crashes: int = 0
    workers_started: int = 0


def check_timeout(value: float, name: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _math_verify_equal(pred: str, ref: str) -> bool:
    """math-verify's verdict, timeouts disabled (the caller enforces one). Runs in the worker process."""
    from math_verify import parse, verify

    gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=None)
    target = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return bool(verify(gold, target, timeout_seconds=None))


def _worker_main() -> None:
    """Worker process loop: JSON lines ``{"pred", "ref"}`` in, ``{"equal"}`` or ``{"error"}`` out."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    # math-verify warns once that its timeout is disabled: the parent enforces it.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    _math_verify_equal("1", "1")  # import and warm up before reporting ready
    reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply({"equal": _math_verify_equal(request["pred"], request["ref"])})
        except Exception as exc:  # a bug in the library must not kill the worker
            reply({"error": f"{type(exc).__name__}: {str(exc)[:300]}"})


_WORKER_BOOT = (
    "import sys; sys.path.insert(0, {root!r}); from runtime.verifier import _worker_main; _worker_main()"
)


class _Worker:
    """One worker process, spoken to in JSON lines over its stdin and stdout (POSIX: uses ``select``).

    A plain subprocess rather than ``multiprocessing``: the ``spawn`` start method re-imports the
    caller's ``__main__`` (breaking unguarded scripts) and ``fork`` is unsafe in threaded callers.
    Its own session keeps a terminal's Ctrl-C away from it; the parent kills it.
    """

    def __init__(self, startup_timeout_s: float) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT.format(root=root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            ready = self._read(startup_timeout_s) == {"ready": True}
        except (EOFError, OSError, ValueError):
            ready = False
        if not ready:
            exitcode = self.process.poll()
            self.kill()
            raise GraderUnavailableError(
                f"grading worker did not start within {startup_timeout_s:g} s (exit code {exitcode}); "
                "check that sympy and math-verify import in a fresh interpreter, or raise "
                "MATHCODER_BENCH_GRADING_STARTUP_TIMEOUT_S"
            )

    def request(self, pred: str, ref: str, timeout_s: float) -> dict[str, Any] | None:
        """The worker's reply, or ``None`` after ``timeout_s``; ``EOFError``/``OSError`` if it died."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"pred": pred, "ref": ref}) + "\n").encode())
        self.process.stdin.flush()
        return self._read(timeout_s)

    def _read(self, timeout_s: float) -> dict[str, Any] | None:
        stdout = self.process.stdout
        assert stdout is not None
        # One reply per request, written at once, so the buffered reader never holds a second line.
        readable, _, _ = select.select([stdout], [], [], timeout_s)
        if not readable:
            return None
        line = stdout.readline()
        if not line:
            raise EOFError("grading worker exited")
        message: dict[str, Any] = json.loads(line)
        return message

    def kill(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; reap the process and close its pipes."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a broken pipe's unflushed buffer
                    pipe.close()


class VerifierPool:
    """Up to ``max_workers`` persistent math-verify worker processes, thread-safe.

    A worker is started on first need (``startup_timeout_s`` bounds its start), reused while healthy,
    and killed on timeout or crash; the next comparison starts a fresh one. Callers beyond
    ``max_workers`` wait for a free worker (that wait does not count against ``timeout_s``).
    """

    def __init__(self, *, max_workers: int = 1, startup_timeout_s: float = 60.0) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        check_timeout(startup_timeout_s, "startup_timeout_s")
        self.max_workers = max_workers
        self.startup_timeout_s = startup_timeout_s
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._closed = False
        self._stats = PoolStats()

    @property
    def stats(self) -> PoolStats:
        with self._cond:
            return self._stats.model_copy()

    @property
    def closed(self) -> bool:
        return self._closed

    def verify(self, pred: str, ref: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Comparison:
        """math-verify's verdict on ``pred`` vs ``ref``, bounded by ``timeout_s`` seconds; never hangs."""
        check_timeout(timeout_s, "timeout_s")
        worker = self._acquire()
        start = time.monotonic()
        healthy = False
        outcome = "crash"
        reply: dict[str, Any] | None = None
        try:
            reply = worker.request(pred, ref, timeout_s)
            healthy = reply is not None
            outcome = "ok" if healthy else "timeout"
        except (EOFError, OSError, ValueError):
            pass
        finally:
            if not healthy:
                worker.kill()
            self._release(worker, healthy, outcome)
        elapsed = time.monotonic() - start
        if outcome == "timeout":
            logger.warning(
                "answer comparison timed out after %.2f s; counted as not equal (pred=%.80r, ref=%.80r)",
                elapsed,
                pred,
                ref,
            )
            return Comparison(equal=False, method="math_verify", timed_out=True, elapsed_s=elapsed)
        if outcome == "crash":
            logger.warning("grading worker died; counted as not equal (pred=%.80r, ref=%.80r)", pred, ref)
            return Comparison(equal=False, method="math_verify", error="worker died", elapsed_s=elapsed)
        assert reply is not None
        if "error" in reply:
            logger.debug("math-verify raised %s (pred=%.80r, ref=%.80r)", reply["error"], pred, ref)
            return Comparison(equal=False, method="math_verify", error=str(reply["error"]), elapsed_s=elapsed)
        return Comparison(equal=bool(reply.get("equal")), method="math_verify", elapsed_s=elapsed)

    def close(self) -> None:
        """Stop all workers; busy ones are stopped when their comparison returns."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.kill()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise GraderUnavailableError("the grading pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < self.max_workers:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            worker = _Worker(self.startup_timeout_s)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._stats.workers_started += 1
        return worker

    def _release(self, worker: _Worker, healthy: bool, outcome: str) -> None:
        kill = False
        with self._cond:
            self._stats.comparisons += 1
            self._stats.timeouts += outcome == "timeout"
            self._stats.crashes += outcome == "crash"
            if healthy and not self._closed:
                self._idle.append(worker)
            else:
                self._live -= 1
                kill = healthy  # an unhealthy worker was killed already
            self._cond.notify()
        if kill:
            worker.kill()


_default_pool: VerifierPool | None = None
_default_pool_lock = threading.Lock()


def default_pool() -> VerifierPool:
    """The process-wide pool used when no ``pool`` is passed, sized by :class:`GradingSettings`."""
    global _default_pool
    with _default_pool_lock:
        if _default_pool is None or _default_pool.closed:
            settings = GradingSettings()
            _default_pool = VerifierPool(
                max_workers=settings.grading_workers, startup_timeout_s=settings.grading_startup_timeout_s
            )
            atexit.register(_default_pool.close)
        return _default_pool
