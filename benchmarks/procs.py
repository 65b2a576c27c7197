"""Looking at this host's processes from the outside, to check what the sandbox leaves behind."""

from __future__ import annotations

import os
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
