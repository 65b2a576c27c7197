"""Looking at this host's processes from the outside: to check what the sandbox leaves behind, and
to kill kernels the way an operator or the host's OOM killer would (the fault scripts)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from pathlib import Path


def pids_of_uids(uids: range) -> list[int]:
    """Host pids of live processes whose real uid lies in ``uids`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        uid = int(fields.get("Uid", "-1").split()[0])
        if uid in uids and not fields.get("State", "").startswith("Z"):
            found.append(int(entry.name))
    return found


def kernel_pid(uid: int) -> int:
    """The host pid of the ipykernel process running as ``uid``."""
    for pid in pids_of_uids(range(uid, uid + 1)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ipykernel_launcher" in cmdline:
            return pid
    raise LookupError(f"no kernel process runs as uid {uid}")


def rss_bytes() -> int:
    """Resident memory of this process."""
    return int(Path(f"/proc/{os.getpid()}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def is_kernel(pid: int) -> bool:
    """Whether ``pid`` runs ipykernel (a kernel, not its init, bubblewrap or a child it started)."""
    with contextlib.suppress(OSError):
        return b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


class KernelKiller(threading.Thread):
    """SIGKILLs a random kernel process of ``uids`` after exponential gaps of mean ``every_s``,
    until ``stopped`` is set; counts its kills and the ones whose process was gone first."""

    def __init__(self, uids: range, every_s: float, seed: int) -> None:
        super().__init__(name="kernel-killer", daemon=True)
        self.uids, self.every_s = uids, every_s
        self.draw = random.Random(seed)
        self.stopped = threading.Event()
        self.kills = self.misses = 0

    def run(self) -> None:
        while not self.stopped.wait(self.draw.expovariate(1 / self.every_s)):
            kernels = [p for p in pids_of_uids(self.uids) if is_kernel(p)]
            if not kernels:
                continue
            try:
                os.kill(self.draw.choice(kernels), signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                self.misses += 1
