"""Forked kernel start: a warm zygote per isolation profile forks each kernel (the local backend's default).

A cold kernel is a new Python process that imports ipykernel, zmq, numpy and sympy and builds an
IPython shell: about half a second of CPU.  A zygote (``sandbox.zygote_main``) has done all that
once; a kernel is a ``fork()`` of it that enters its own isolation (the same layers as bubblewrap
gives a cold kernel, see that module and sandbox/README.md), reads its own connection file, binds
its sockets and serves.  The host learns that it is ready from the zygote, without polling, and
then needs one ``kernel_info`` round trip (``sandbox.kernel``).

``ZygoteLauncher`` starts the zygote on first use and again after it dies (its kernels die with it,
as they die with the host; their sessions see ``crashed`` and continue on a fresh kernel).  Where
a fork fails, the kernel is started cold and the reason is logged; after ``_MAX_FAILURES`` failures
in a row the launcher stays cold and says why in ``describe()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import cgroup, nsutil
from sandbox.errors import SandboxError
from sandbox.launcher import KernelProcess, KernelSpec
from sandbox.local import LocalLauncher, death_note, kernel_env, log_tail, lost_reason
from sandbox.settings import SandboxSettings

logger = logging.getLogger(__name__)

PRELOAD = ("numpy", "numpy.random", "sympy")
_MAX_FAILURES = 3
_CMDLINE_ROOM = 512
"""Padding on the zygote's command line, which each kernel overwrites with its own."""


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class ZygoteError(SandboxError):
    """The zygote could not start or fork a kernel (the launcher falls back to a cold start)."""


class ZygoteDied(ZygoteError):
    """The zygote died (its kernels with it)."""


@dataclass
class ForkedKernelProcess:
    """A kernel forked by a zygote, from the host's side (``KernelProcess``)."""

    pid: int
    spec: KernelSpec
    group: cgroup.KernelCgroup | None
    workdir: Path | None
    exited: asyncio.Future[int]
    ready: asyncio.Future[dict[str, float]]
    process_group: bool
    _closed: bool = field(default=False)

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        # bwrap profile: pid is the namespace's init, whose death kills all inside; none: its group.
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if self.process_group else os.kill)(self.pid, signal.SIGKILL)

    async def close(self, *, keep_conn_dir: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self.kill()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self.exited)
        if self.group is not None:
            await self.group.kill_all()
            self.group.remove()
        if not keep_conn_dir:  # kept when the same spec is started again (another try, or cold)
            shutil.rmtree(self.spec.conn_dir, ignore_errors=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self) -> str:
        return log_tail(self.spec)

    def death_note(self) -> str:
        code = self.exited.result() if self.exited.done() else None
        if code == _ZYGOTE_DIED:
            return "the kernel died with its zygote (the template process that forks kernels)"
        return death_note(code, self.group, log_tail(self.spec))

    def lost_reason(self) -> str | None:
        code = self.exited.result() if self.exited.done() else None
        if code == _ZYGOTE_DIED and not self._closed:
            return "the kernel died with its zygote (the template process that forks kernels)"
        return lost_reason(code, self.group, self.spec, closed=self._closed)


_ZYGOTE_DIED = -int(signal.SIGKILL) - 1000


class Zygote:
    """One running zygote process and the kernels it forked."""

    def __init__(self, process: asyncio.subprocess.Process, profile: dict[str, Any]) -> None:
        self.process = process
        self.profile = profile
        self.pid = process.pid
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._next = 0
        self._forks: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._ready: dict[int, asyncio.Future[dict[str, float]]] = {}
        self._fork_costs: dict[int, dict[str, float]] = {}
        self._reader = asyncio.ensure_future(self._read())

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self._reader.done()

    async def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                self._dispatch(json.loads(line))
        finally:
            self._died()

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind, rid = event["ev"], event.get("id", -1)
        if kind == "hello":
            if not self.hello.done():
                self.hello.set_result(event)
        elif kind == "forked":
            self._fork_costs[rid] = {
                "zygote_fork_ms": event["fork_ms"],
                "zygote_fork_cpu_ms": event["fork_cpu_ms"],
            }
            _resolve(self._forks.pop(rid, None), event["pid"])
        elif kind == "failed":
            future = self._forks.pop(rid, None)
            if future is not None and not future.done():
                future.set_exception(ZygoteError(f"the zygote could not fork a kernel: {event['error']}"))
            self._exits.pop(rid, None)
            self._ready.pop(rid, None)
        elif kind == "ready":
            _resolve(
                self._ready.pop(rid, None), {**self._fork_costs.pop(rid, {}), **event.get("timings", {})}
            )
        elif kind == "exit":
            self._ready.pop(rid, None)
            self._fork_costs.pop(rid, None)
            _resolve(self._exits.pop(rid, None), os.waitstatus_to_exitcode(event["status"]))

    def _died(self) -> None:
        error = ZygoteDied("the zygote died")
        if not self.hello.done():
            self.hello.set_exception(error)
        for future in self._forks.values():
            if not future.done():
                future.set_exception(error)
        for exited in self._exits.values():
            _resolve(exited, _ZYGOTE_DIED)
        for ready in self._ready.values():
            if not ready.done():
                ready.set_exception(error)
        self._forks.clear()
        self._exits.clear()
        self._ready.clear()

    async def fork(self, request: dict[str, Any], timeout_s: float) -> tuple[int, asyncio.Future[int], Any]:
        loop = asyncio.get_running_loop()
        rid = self._next
        self._next += 1
        forked: asyncio.Future[int] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        ready: asyncio.Future[dict[str, float]] = loop.create_future()
        self._forks[rid], self._exits[rid], self._ready[rid] = forked, exited, ready
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({**request, "id": rid}) + "\n").encode())
        try:
            pid = await asyncio.wait_for(forked, timeout_s)
        except BaseException:
            self._forks.pop(rid, None)
            raise
        if pid == self.pid:  # cannot happen: the zygote reports its child; never hand it out
            raise ZygoteError("the zygote reported itself as a kernel")
        return pid, exited, ready

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _resolve(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


class ZygoteLauncher:
    """Starts each kernel as a fork of a warm zygote; a cold start (``LocalLauncher``) where that fails."""

    def __init__(self, settings: SandboxSettings, cold: LocalLauncher | None = None) -> None:
        self.settings = settings
        self.cold = cold if cold is not None else LocalLauncher(settings)
        self.fallback_reason: str | None = None
        self.zygote_starts = 0
        self.cold_starts = 0
        self._zygote: Zygote | None = None
        self._starting: asyncio.Future[Zygote] | None = None
        self._failures = 0
        self._closed = False

    def describe(self) -> dict[str, Any]:
        return {
            **self.cold.describe(),
            "start": "cold" if self.fallback_reason else "fork",
            "fork_fallback_reason": self.fallback_reason,
            "preload": list(PRELOAD),
        }

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None and self._zygote.alive else None

    async def launch(self, spec: KernelSpec) -> KernelProcess:
        if self.fallback_reason is None and not self._closed:
            try:
                try:
                    process = await self._fork_ready(spec)
                except ZygoteDied:  # killed under us: its kernels died too; once more from a new one
                    process = await self._fork_ready(spec)
            except (TimeoutError, ZygoteError, OSError) as exc:
                self._failures += 1
                reason = f"{type(exc).__name__}: {exc}"
                if self._failures >= _MAX_FAILURES:
                    self.fallback_reason = reason
                    logger.warning(
                        "forked kernel start disabled after %d failures (%s); cold starts",
                        self._failures,
                        reason,
                    )
                else:
                    logger.warning("forked kernel start failed (%s); this kernel starts cold", reason)
            else:
                self._failures = 0
                return process
        self.cold_starts += 1
        return await self.cold.launch(spec)

    async def _fork_ready(self, spec: KernelSpec) -> ForkedKernelProcess:
        """A forked kernel that told its zygote it is ready (its sockets bound)."""
        process = await self._fork(spec)
        waiting: set[asyncio.Future[Any]] = {process.ready, process.exited}
        done, _ = await asyncio.wait(
            waiting,
            timeout=self.settings.start_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if process.ready in done and process.ready.exception() is None:
            return process
        await process.close(keep_conn_dir=True)
        if process.exited.done() and process.exited.result() == _ZYGOTE_DIED:
            raise ZygoteDied("the zygote died while the kernel started")
        if process.exited.done():
            raise ZygoteError(f"a forked kernel did not start: {process.death_note()}")
        raise ZygoteError(f"a forked kernel did not start within {self.settings.start_timeout_s:g} s")

    async def _fork(self, spec: KernelSpec) -> ForkedKernelProcess:
        zygote = await self._ensure_zygote()
        s = self.settings
        uid, group, workdir = self.cold.prepare(spec)
        home = "/tmp" if workdir is None else str(workdir)
        request = {
            "op": "fork",
            "conn_dir": str(spec.conn_dir),
            "conn_file": str(spec.conn_file),
            "startup_file": str(spec.startup_file),
            "uid": uid,
            "cgroup_procs": group.procs if group is not None else [],
            "env": kernel_env(home),
            "cwd": home,
            "cmdline": " ".join(
                [sys.executable, "-m", "ipykernel_launcher", "-f", str(spec.conn_file), "(forked)"]
            ),
        }
        try:
            pid, exited, ready = await zygote.fork(request, s.start_timeout_s)
        except BaseException:
            if group is not None:
                group.remove()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        return ForkedKernelProcess(
            pid=pid, spec=spec, group=group, workdir=workdir, exited=exited, ready=ready,
            process_group=s.isolation != "bwrap",
        )  # fmt: skip

    async def _ensure_zygote(self) -> Zygote:
        if self._zygote is not None and self._zygote.alive:
            return self._zygote
        if self._starting is None or self._starting.done():
            dead, self._zygote = self._zygote, None
            self._starting = asyncio.ensure_future(self._start_zygote(replacing=dead))
        self._zygote = await asyncio.shield(self._starting)
        return self._zygote

    async def _start_zygote(self, replacing: Zygote | None = None) -> Zygote:
        if replacing is not None:
            logger.warning("the zygote (pid %d) died; starting a new one", replacing.pid)
            await replacing.close()
        s = self.settings
        bwrap = s.isolation == "bwrap"
        if bwrap and not nsutil.SUPPORTED:
            raise ZygoteError(
                f"forked kernels know the system calls of x86_64 and aarch64, not {platform.machine()}"
            )
        if bwrap and not self.cold.privileged:
            raise ZygoteError(
                "forked kernels with isolation='bwrap' need root (namespaces and uids); cold starts"
            )
        t0 = time.perf_counter()
        profile = {
            "isolation": s.isolation,
            "preload": list(PRELOAD),
            "kernel_args": ["--HistoryManager.enabled=False"],
            "rlimits": self.cold.rlimits(),
            "root": {**self.cold.root_plan(), "dir": str(self._root_dir())} if bwrap else None,
            "package_root": _PACKAGE_ROOT,
        }
        ipython_dir = self._home() / "ipython"
        ipython_dir.mkdir(mode=0o700, exist_ok=True)
        env = {
            **kernel_env(str(ipython_dir)),
            "IPYTHONDIR": str(ipython_dir),
            "PYTHONPATH": _PACKAGE_ROOT,
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # debugpy, imported by ipykernel, warns otherwise
        }
        log = self._home() / "zygote.log"
        with log.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sandbox.zygote_main", str(os.getpid()), " " * _CMDLINE_ROOM,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
                env=env, cwd="/", start_new_session=True, limit=1 << 20,
            )  # fmt: skip
        zygote = Zygote(process, profile)
        assert process.stdin is not None
        process.stdin.write((json.dumps(profile) + "\n").encode())
        try:
            hello = await asyncio.wait_for(asyncio.shield(zygote.hello), s.start_timeout_s)
        except BaseException as exc:
            await zygote.close()
            tail = log.read_text(errors="replace")[-600:].strip()
            raise ZygoteError(f"the zygote did not start ({type(exc).__name__}): {tail}") from None
        self.zygote_starts += 1
        logger.info(
            "zygote %d ready in %.2f s (%s)", zygote.pid, time.perf_counter() - t0, hello.get("timings")
        )
        return zygote

    def _home(self) -> Path:
        """The zygote's files (its log, IPython directory, the kernels' root mount point), removed on close.

        Those of hosts that died without closing (SIGKILL) are removed here.
        """
        home = self.settings.run_dir / f"zygote-{os.getpid()}"
        if not home.exists():
            for stale in self.settings.run_dir.glob("zygote-*"):
                pid = stale.name.removeprefix("zygote-")
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    shutil.rmtree(stale, ignore_errors=True)
        home.mkdir(mode=0o711, exist_ok=True)
        return home

    def _root_dir(self) -> Path:
        """An empty directory that each kernel's private root is mounted on (in its own mount namespace)."""
        root = self._home() / "root"
        root.mkdir(mode=0o755, exist_ok=True)
        return root

    async def aclose(self) -> None:
        """Stop the zygote (the pool closes its kernels first)."""
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        if self._zygote is not None:
            await self._zygote.close()
            self._zygote = None
        shutil.rmtree(self.settings.run_dir / f"zygote-{os.getpid()}", ignore_errors=True)
