"""What hosts that died without closing their pool (SIGKILL, OOM kill, power cut) left behind.

A host that dies takes its kernels with it (``--die-with-parent``; a forked kernel's zygote dies with
its host, and every kernel with its zygote), but not their files: the cgroups it made
(``mathcoder-<host pid>-…``, under the host's own cgroup) and the connection directories
(``k<slot>-<host pid>-…`` in ``run_dir``).  A new pool removes those of hosts that are gone, killing
first whatever still runs in such a cgroup, so a killed run leaves nothing behind once the next
one starts.  The zygote's own folder is swept by ``sandbox.zygote``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sandbox import cgroup

logger = logging.getLogger(__name__)

_CGROUP = re.compile(r"mathcoder-(\d+)-")
_CONN_DIR = re.compile(r"k\d+-(\d+)-")


@dataclass
class Swept:
    cgroups: int = 0
    processes: int = 0
    conn_dirs: int = 0


def conn_dir_prefix(slot: int) -> str:
    """The name a kernel's connection directory starts with: its slot and the host's pid."""
    return f"k{slot}-{os.getpid()}-"


def _gone(pid: str) -> bool:
    return pid != str(os.getpid()) and not Path(f"/proc/{pid}").exists()


def _left(run_dir: Path) -> tuple[list[cgroup.KernelCgroup], list[Path]]:
    """The cgroups and connection directories of hosts that are gone."""
    parents = cgroup.parents()
    names: set[str] = set()
    for parent in parents:
        with contextlib.suppress(OSError):
            names.update(
                d.name for d in parent.iterdir() if (m := _CGROUP.match(d.name)) and _gone(m.group(1))
            )
    groups = []
    for name in sorted(names):
        dirs = [parent / name for parent in parents if (parent / name).is_dir()]
        groups.append(cgroup.KernelCgroup(dirs=dirs, procs=[str(d / "cgroup.procs") for d in dirs]))
    conn_dirs: list[Path] = []
    with contextlib.suppress(OSError):
        conn_dirs = [d for d in run_dir.iterdir() if (m := _CONN_DIR.match(d.name)) and _gone(m.group(1))]
    return groups, conn_dirs


async def sweep(run_dir: Path) -> Swept:
    """Remove the cgroups and connection directories of hosts that are gone; say how many."""
    groups, conn_dirs = await asyncio.to_thread(_left, run_dir)
    swept = Swept(cgroups=len(groups), conn_dirs=len(conn_dirs))
    for group in groups:
        swept.processes += len(group.pids())
        await group.kill_all()
        group.remove()
    for d in conn_dirs:
        await asyncio.to_thread(shutil.rmtree, d, ignore_errors=True)
    if groups or conn_dirs:
        logger.warning(
            "removed what dead hosts left: %d cgroups, %d processes, %d kernel directories",
            swept.cgroups,
            swept.processes,
            swept.conn_dirs,
        )
    return swept
