"""Code that runs inside every kernel at start-up (copied into the kernel's directory, not imported).

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
