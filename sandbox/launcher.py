"""How a kernel process is started and stopped: the interface the backends implement.

A backend (``local``: bubblewrap on this host; ``docker``: a container) starts
``python -m ipykernel_launcher -f <connection file>`` inside its isolation and hands back a
``KernelProcess``.  Everything that speaks the Jupyter protocol (``sandbox.kernel``) is shared:
kernels always use the ``ipc`` transport — unix sockets in a private directory, reachable from the
host even when the kernel has no network at all, and closed to other users by the directory's mode —
and each kernel gets its own random HMAC key.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jupyter_client.connect import write_connection_file


class KernelProcess(Protocol):
    """A started kernel, from the host's side."""

    async def wait(self) -> int:
        """Wait for the kernel to exit; its exit status."""
        ...

    def kill(self) -> None:
        """Kill the kernel and everything it started, at once (SIGKILL semantics)."""
        ...

    async def close(self) -> None:
        """Kill, reap and remove every host resource of the kernel (idempotent)."""
        ...

    def death_note(self) -> str:
        """A short account of why the kernel died, for the result shown to the caller."""
        ...

    def lost_reason(self) -> str | None:
        """Why the kernel's death was not its code's doing (killed from outside the sandbox, by
        the sandbox's own shutdown, with its zygote), or None when its code may have caused it."""
        ...


class Launcher(Protocol):
    async def launch(self, spec: KernelSpec) -> KernelProcess: ...

    def describe(self) -> dict[str, Any]:
        """The isolation layers in effect, for logs, benchmarks and ``/readyz``."""
        ...


@dataclass(frozen=True)
class KernelSpec:
    """One kernel to start: its slot (which picks its uid), its private directory and connection file."""

    slot: int
    conn_dir: Path
    conn_file: Path
    connection: dict[str, Any]

    @property
    def startup_file(self) -> Path:
        return self.conn_dir / "startup.py"

    def kernel_argv(self, python: str) -> list[str]:
        """The command that starts the kernel, the same for every backend."""
        return [
            python, "-m", "ipykernel_launcher", "-f", str(self.conn_file),
            f"--IPKernelApp.exec_files={self.startup_file}",
            # No sqlite history: nothing to gain in a one-session kernel, and it costs each cell time.
            "--HistoryManager.enabled=False",
        ]  # fmt: skip


def make_spec(slot: int, conn_dir: Path, *, output_limit: int) -> KernelSpec:
    """Write an ipc connection file with a fresh key, and the start-up code, into ``conn_dir``.

    ``conn_dir`` must exist with mode 0700.  The start-up code bounds each cell's output to
    ``output_limit`` characters per stream inside the kernel (``sandbox.kernel_startup``).
    """
    conn_file = conn_dir / "kernel.json"
    key = secrets.token_hex(32).encode()
    _, info = write_connection_file(str(conn_file), transport="ipc", ip=str(conn_dir / "k"), key=key)
    spec = KernelSpec(slot=slot, conn_dir=conn_dir, conn_file=conn_file, connection=dict(info))
    source = (Path(__file__).parent / "kernel_startup.py").read_text()
    # Run inside a function so that nothing but the patches is left in the user's namespace.
    spec.startup_file.write_text(
        f"def __mathcoder_startup():\n    exec({source!r}, ns := {{}})\n"
        f"    ns['install_output_limit']({output_limit})\n    ns['install_self_kill_marker']()\n"
        "__mathcoder_startup()\ndel __mathcoder_startup\n"
    )
    return spec
