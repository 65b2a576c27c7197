"""Per-kernel memory and pids cgroups (v1 hierarchies, or the v2 unified one).

rlimits bound one process; a cgroup bounds a kernel with everything it spawns.  The memory cgroup
is the hard backstop under RLIMIT_AS (the kernel is OOM-killed instead of the host suffering), and
pids.max contains fork bombs even where RLIMIT_NPROC does not apply.  Groups are made under the
cgroup this process already sits in, so the host's own accounting still covers them.  The kernel
joins its groups between fork and exec (``join``), before it can spawn anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")


def _own_path(controller: str) -> str | None:
    """This process's cgroup path in ``controller``'s v1 hierarchy ("" for v2's unified one)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or (controller == "" and controllers == ""):
            return path
    return None


@dataclass
class KernelCgroup:
    """The cgroup directories of one kernel; ``procs`` are the files its pid is written to."""

    dirs: list[Path] = field(default_factory=list)
    procs: list[str] = field(default_factory=list)

    def join(self) -> None:
        """Move the calling process in (runs in the child between fork and exec: no allocation-heavy work)."""
        pid = str(os.getpid()).encode()
        for procs in self.procs:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def oom_killed(self) -> bool:
        """Whether the memory controller killed something in this group."""
        for d in self.dirs:
            for name in ("memory.oom_control", "memory.events"):
                with contextlib.suppress(OSError):
                    for line in (d / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value) > 0:
                            return True
        return False

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in Path(procs).read_text().split())
        return sorted(found)

    async def kill_all(self, *, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the group until it is empty; False if some outlived ``timeout_s``.

        A pid namespace dies asynchronously after its init is killed, so the group is polled: v1
        cgroups have no event for "empty" short of a release agent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.001
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if loop.time() > deadline:
                logger.warning("processes %s outlived their kernel's cgroup kill", pids)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def remove(self) -> None:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                d.rmdir()


def parents() -> list[Path]:
    """The folders this process makes its kernels' cgroups in (v2's one, or v1's memory and pids)."""
    if (ROOT / "cgroup.controllers").exists():
        own = _own_path("")
        return [] if own is None else [ROOT / own.lstrip("/")]
    found = []
    for controller in ("memory", "pids"):
        own = _own_path(controller)
        if own is not None:
            found.append(ROOT / controller / own.lstrip("/"))
    return found


def dynmods_favoured(mounts: str | None = None) -> bool:
    """Whether a cgroup hierarchy is mounted with ``favordynmods`` (``mounts`` as /proc/self/mounts reads).

    Joining a cgroup takes the kernel's global threadgroup lock for writing, which waits out an RCU
    grace period unless writes are frequent: 7-15 ms of a forked kernel's start on an otherwise idle
    2-core VM, most of its wait.  The mount option keeps that lock in its writer-friendly mode for the
    whole host (any hierarchy's option does it), at a small cost to every fork and exit; it is the
    host operator's choice (sandbox/README.md), so this module only reports it."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return False
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2") and "favordynmods" in fields[3].split(","):
            return True
    return False


def create(name: str, *, memory_bytes: int, pids_max: int) -> KernelCgroup | None:
    """Make memory and pids groups called ``name``; None (with a warning) where the host forbids it."""
    group = KernelCgroup()
    try:
        if (ROOT / "cgroup.controllers").exists():
            _create_v2(group, name, memory_bytes, pids_max)
        else:
            _create_v1(group, name, memory_bytes, pids_max)
    except OSError as exc:
        group.remove()
        logger.warning("no cgroup limits for kernel %s (%s); rlimits still apply", name, exc)
        return None
    return group


def _create_v1(group: KernelCgroup, name: str, memory_bytes: int, pids_max: int) -> None:
    for controller, limits in (
        ("memory", {"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}),
        ("pids", {"pids.max": pids_max}),
    ):
        own = _own_path(controller)
        if own is None:
            raise OSError(f"no {controller} cgroup hierarchy")
        d = ROOT / controller / own.lstrip("/") / name
        d.mkdir()
        group.dirs.append(d)
        for key, value in limits.items():
            path = d / key
            if key == "memory.memsw.limit_in_bytes" and not path.exists():
                continue  # swap accounting off: the plain limit suffices without swap
            path.write_text(str(value))
        group.procs.append(str(d / "cgroup.procs"))


def _create_v2(group: KernelCgroup, name: str, memory_bytes: int, pids_max: int) -> None:
    own = _own_path("")
    if own is None:
        raise OSError("no unified cgroup hierarchy")
    d = ROOT / own.lstrip("/") / name
    d.mkdir()
    group.dirs.append(d)
    (d / "memory.max").write_text(str(memory_bytes))
    (d / "memory.swap.max").write_text("0")
    (d / "pids.max").write_text(str(pids_max))
    group.procs.append(str(d / "cgroup.procs"))
