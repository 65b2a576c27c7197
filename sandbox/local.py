"""The local backend: each kernel in bubblewrap namespaces, as its own unprivileged uid, with limits.

Layers, outermost first (see sandbox/README.md for what each stops):

1. cgroups (``sandbox.cgroup``): memory and pids limits for the kernel and all it spawns;
2. rlimits set between fork and exec: address space, CPU seconds, open files, file size, processes;
3. bubblewrap: new network namespace with no interfaces but a private loopback, new pid, ipc and uts
   namespaces, a root made only of read-only binds of /usr and the Python installation, a private
   size-capped tmpfs as /tmp (the working directory), a scrubbed environment, and death with its
   parent;
4. setpriv inside: the kernel drops to uid ``uid_base + slot`` with no capabilities and no_new_privs
   (bubblewrap's own ``--uid`` is not used: as root it maps the sandbox uid back to host root).

``isolation="none"`` keeps only rlimits, cgroups, a scrubbed environment and a private working
directory, for development hosts without bubblewrap: the kernel runs as the server's own user
(a Python installation under a private home is not usable by another uid) and sees the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import cgroup
from sandbox.errors import SandboxUnavailable
from sandbox.kernel_startup import SELF_KILL_MARK
from sandbox.launcher import KernelSpec
from sandbox.settings import SandboxSettings

logger = logging.getLogger(__name__)

_THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def kernel_env(home: str) -> dict[str, str]:
    """The whole environment of a kernel: nothing of the host's (no keys, no MATHCODER_* secrets)."""
    venv_bin = str(Path(sys.prefix) / "bin")
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{home}/.mpl",
        "IPYTHONDIR": f"{home}/.ipython",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MALLOC_ARENA_MAX": "2",  # per-thread malloc arenas would map 64 MB of address space each
        **_THREAD_ENV,  # each thread counts against the pids limit
    }


@dataclass
class LocalKernelProcess:
    process: asyncio.subprocess.Process
    spec: KernelSpec
    group: cgroup.KernelCgroup | None
    workdir: Path | None = None
    _closed: bool = field(default=False)

    async def wait(self) -> int:
        return await self.process.wait()

    def kill(self) -> None:
        # bwrap leads its own process group; killing it tears down the pid namespace and all inside.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.kill()
        await self.process.wait()
        if self.group is not None:
            await self.group.kill_all()  # the namespace's processes die after bwrap, not with it
            self.group.remove()
        shutil.rmtree(self.spec.conn_dir, ignore_errors=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, max_chars: int = 800) -> str:
        return log_tail(self.spec, max_chars)

    def death_note(self) -> str:
        return death_note(self.process.returncode, self.group, self.log_tail())

    def lost_reason(self) -> str | None:
        return lost_reason(self.process.returncode, self.group, self.spec, closed=self._closed)


def death_note(code: int | None, group: cgroup.KernelCgroup | None, log_tail: str) -> str:
    """Why a kernel died, from its exit code (negative: a signal), its cgroup and the tail of its log."""
    if group is not None and group.oom_killed():
        return "the kernel was killed for exceeding its memory limit"
    if code is not None and code < 0:
        return f"the kernel died from signal {signal.Signals(-code).name}"
    if code is not None and code > 128:
        with contextlib.suppress(ValueError):
            return f"the kernel died from signal {signal.Signals(code - 128).name}"
    return f"the kernel exited with status {code}" + (f": {log_tail}" if log_tail else "")


def lost_reason(
    code: int | None, group: cgroup.KernelCgroup | None, spec: KernelSpec, *, closed: bool
) -> str | None:
    """Why a dead kernel's death was not its code's doing, or None (see ``KernelProcess.lost_reason``).

    The sandbox's own kills are known (``closed``: shut down; a timeout kill is the cell's outcome and
    never asks).  Otherwise only a SIGKILL can come from outside: every other death is the code's own
    (an exit, a segfault, a signal it sent).  A SIGKILL is the code's when its own cgroup recorded an
    out-of-memory kill, or when the kernel's log holds the mark a cell leaves when it SIGKILLs its
    own kernel through Python (``kernel_startup.install_self_kill_marker``); else it came from
    outside: the host's OOM killer, an operator, a chaos test.
    """
    if closed:
        return "the sandbox shut the kernel down"
    if code not in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return None
    if group is not None and group.oom_killed():
        return None
    if SELF_KILL_MARK in log_tail(spec, max_chars=4096):
        return None
    return "the kernel was killed (SIGKILL) from outside the sandbox"


def log_tail(spec: KernelSpec, max_chars: int = 800) -> str:
    try:
        return (spec.conn_dir / "kernel.log").read_text(errors="replace")[-max_chars:].strip()
    except OSError:
        return ""


class LocalLauncher:
    """Starts kernels on this host under the isolation that ``settings`` asks for."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.privileged = os.geteuid() == 0
        if settings.isolation == "bwrap":
            missing = [tool for tool in ("bwrap", "setpriv") if shutil.which(tool) is None]
            if missing:
                raise SandboxUnavailable(
                    f"isolation='bwrap' needs {', '.join(missing)} on PATH (Debian: apt-get install bubblewrap "
                    "util-linux); or set MATHCODER_SANDBOX_ISOLATION=none on a development machine"
                )
        self.settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o711)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "backend": "local",
            "isolation": s.isolation,
            "unprivileged_uid": s.isolation == "bwrap" and self.privileged,
            "network": s.isolation == "none",
            "cgroups": s.cgroups and self.privileged,
            "cgroup_favordynmods": s.cgroups and self.privileged and cgroup.dynmods_favoured(),
            "memory_mb": s.memory_mb,
            "address_space_mb": s.address_space_mb,
            "max_processes": s.max_processes,
        }

    def uid(self, slot: int) -> int | None:
        return self.settings.uid_base + slot if self.privileged else None

    def prepare(self, spec: KernelSpec) -> tuple[int | None, cgroup.KernelCgroup | None, Path | None]:
        """Host side of a kernel, for any way of starting it: its uid, cgroup and (isolation=none) workdir."""
        s = self.settings
        uid = self.uid(spec.slot) if s.isolation == "bwrap" else None
        if uid is not None:
            os.chown(spec.conn_dir, uid, uid)
            os.chown(spec.conn_file, uid, uid)
        group = None
        if s.cgroups and self.privileged:
            group = cgroup.create(
                f"mathcoder-{os.getpid()}-{spec.conn_dir.name}",
                memory_bytes=s.memory_mb << 20,
                pids_max=s.max_processes + 8,  # + bubblewrap's own processes
            )
        workdir = None
        if s.isolation != "bwrap":
            workdir = spec.conn_dir.with_name(spec.conn_dir.name + "-work")
            workdir.mkdir(mode=0o700)
        return uid, group, workdir

    async def launch(self, spec: KernelSpec) -> LocalKernelProcess:
        s = self.settings
        uid, group, workdir = self.prepare(spec)
        if s.isolation == "bwrap":
            argv = self._bwrap_argv(spec, uid)
            env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            cwd = "/"
        else:
            assert workdir is not None
            argv = spec.kernel_argv(sys.executable)
            env = kernel_env(str(workdir))
            cwd = str(workdir)
        # The kernel's own stderr (start-up failures, C-level writes) goes to a host file, bounded by
        # RLIMIT_FSIZE, so that a death can be explained.
        log = spec.conn_dir / "kernel.log"
        with log.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=self._limits(group),
            )
        return LocalKernelProcess(process=process, spec=spec, group=group, workdir=workdir)

    def rlimits(self) -> list[tuple[int, int]]:
        s = self.settings
        return [
            (resource.RLIMIT_AS, s.address_space_mb << 20),
            (resource.RLIMIT_CPU, s.cpu_time_s),
            (resource.RLIMIT_NOFILE, s.max_open_files),
            (resource.RLIMIT_FSIZE, s.max_file_mb << 20),
            (resource.RLIMIT_NPROC, s.max_processes),
            (resource.RLIMIT_CORE, 0),
        ]

    def root_plan(self) -> dict[str, Any]:
        """The kernel's filesystem for a forked start: the same binds as ``_bwrap_argv``."""
        return {
            "symlinks": [
                [os.readlink(f"/{link}"), f"/{link}"]
                for link in ("lib", "lib64", "bin", "sbin")
                if Path(f"/{link}").is_symlink()
            ],
            "etc_files": [
                p for p in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives") if Path(p).exists()
            ],
            "python_dirs": sorted({str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix))}),
            "tmp_bytes": self.settings.workdir_mb << 20,
        }

    def _limits(self, group: cgroup.KernelCgroup | None) -> Any:
        limits = self.rlimits()

        def preexec() -> None:  # in the child, between fork and exec
            if group is not None:
                group.join()
            for which, value in limits:
                resource.setrlimit(which, (value, value))

        return preexec

    def _bwrap_argv(self, spec: KernelSpec, uid: int | None) -> list[str]:
        s = self.settings
        python_dirs = sorted({str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix))})
        argv = [
            "bwrap", "--die-with-parent", "--new-session",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--ro-bind", "/usr", "/usr",
        ]  # fmt: skip
        for link in ("lib", "lib64", "bin", "sbin"):
            if Path(f"/{link}").is_symlink():
                argv += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        for path in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"):
            if Path(path).exists():
                argv += ["--ro-bind", path, path]
        made: set[str] = {"/", "/tmp"}

        def parents_of(path: str) -> list[str]:
            # Made explicitly: bwrap would create them 0700, untraversable for the kernel's uid.
            out = []
            for parent in reversed(Path(path).parents):
                if str(parent) not in made:
                    made.add(str(parent))
                    out += ["--perms", "0755", "--dir", str(parent)]
            return out

        argv += [
            "--perms", "1777", "--size", str(s.workdir_mb << 20), "--tmpfs", "/tmp",
            "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc",
        ]  # fmt: skip
        # After the /tmp tmpfs, or the tmpfs would hide what lies under /tmp (a checkout, the sockets).
        for d in python_dirs:
            if not d.startswith("/usr/"):
                argv += [*parents_of(d), "--ro-bind", d, d]
        argv += [*parents_of(str(spec.conn_dir)), "--bind", str(spec.conn_dir), str(spec.conn_dir)]
        argv += ["--clearenv", "--chdir", "/tmp"]
        for key, value in kernel_env("/tmp").items():
            argv += ["--setenv", key, value]
        argv.append("--")
        if uid is not None:
            argv += [
                "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
            ]  # fmt: skip
        else:
            # Not root: a user namespace stands in (the uid stays ours, privileges do not grow).
            argv[1:1] = ["--unshare-user"]
        argv += spec.kernel_argv(sys.executable)
        return argv
