"""Code that runs inside every kernel at start-up (copied into the kernel's directory, not imported).

It marks a kernel that SIGKILLs itself (``install_self_kill_marker``), so that the host can tell
that death (the code's own outcome) from a kill from outside the sandbox (an infrastructure
failure; see ``sandbox.local.lost_reason``).

It bounds output at the source: once a cell has written ``limit`` characters to stdout or stderr,
the write that crosses the line is cut and raises ``OutputLimitExceeded`` in the cell, which stops
it like any other error; a displayed value's text is cut likewise.  Without this, a cell printing in
a tight loop outruns ipykernel's I/O thread, whose buffer grows until the kernel runs out of
memory, and interrupting such a cell can leave ipykernel's output machinery broken.  The host bounds what it keeps as well
(``sandbox.kernel``), so code that undoes these patches harms only its own kernel.
"""

from __future__ import annotations

import sys
from typing import Any


class OutputLimitExceeded(Exception):
    """Raised in a cell that prints more than the sandbox keeps."""


def install_output_limit(limit: int) -> None:
    import builtins

    from IPython import get_ipython

    # Reachable by name from the traceback, so the model reads what happened.
    builtins.OutputLimitExceeded = OutputLimitExceeded  # type: ignore[attr-defined]

    shell: Any = get_ipython()
    written = {"stdout": 0, "stderr": 0}

    def reset(*_: object) -> None:
        written["stdout"] = written["stderr"] = 0

    def bounded(name: str, write: Any) -> Any:
        def bounded_write(text: str) -> int:
            used = written[name]
            room = limit + 1 - used  # one character past the limit tells the host it was cut
            if len(text) < room:
                written[name] = used + len(text)
                return int(write(text) or len(text))
            if room > 0:
                written[name] = limit + 1
                write(text[:room])
            raise OutputLimitExceeded(
                f"the cell wrote more than {limit} characters to {name}; it was stopped"
            )

        return bounded_write

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        stream.write = bounded(name, stream.write)
    shell.events.register("pre_run_cell", reset)

    formatter = shell.display_formatter
    format_all = formatter.format

    def bounded_format(obj: object, *args: Any, **kwargs: Any) -> Any:
        data, metadata = format_all(obj, *args, **kwargs)
        text = data.get("text/plain")
        if isinstance(text, str) and len(text) > limit:
            data["text/plain"] = text[: limit + 1]
        return data, metadata

    formatter.format = bounded_format


SELF_KILL_MARK = "mathcoder-sandbox: the cell sent SIGKILL to its own kernel"
"""Written to the kernel's stderr (its host-side log) just before a cell kills its own kernel."""


def install_self_kill_marker() -> None:
    """Leave ``SELF_KILL_MARK`` in the kernel's log when Python code sends SIGKILL to this process.

    An audit hook sees ``os.kill``, ``os.killpg`` and ``signal.pthread_kill`` before the signal is
    sent.  Code that goes around Python (a child process's ``kill``, ctypes) leaves no mark: its
    death then reads as a kill from outside, retried as an infrastructure failure, never graded.
    """
    import os
    import signal

    me = os.getpid()
    # ipykernel has fd 2 on a pipe that a thread forwards to the client (and the log): a process
    # killed at once never gets there.  Its copy of the original stderr is the log itself.
    log_fd = getattr(sys.stderr, "_original_stdstream_copy", None) or 2

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in ("os.kill", "os.killpg", "signal.pthread_kill") or len(args) < 2:
            return
        target, sig = args[0], args[1]
        if sig != signal.SIGKILL:
            return
        if event == "os.kill":
            ours = target in (me, 0, -1) or (
                isinstance(target, int) and target < -1 and -target == os.getpgrp()
            )
        elif event == "os.killpg":
            ours = target in (0, os.getpgrp())
        else:
            ours = True  # a thread of this process
        if ours:
            os.write(log_fd, f"\n{SELF_KILL_MARK}\n".encode())

    sys.addaudithook(hook)
