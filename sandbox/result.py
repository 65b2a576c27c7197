"""What running one cell produced: ``ExecutionResult`` and the text a model is shown of it.

The result keeps everything a caller may want (full stdout and stderr up to the capture bound, rich
results, the whole traceback); ``prompt_text`` is the condensed view fed back to a model — ANSI
codes stripped, tracebacks cut to the last frame and the error line (as ToRA and Qwen2.5-Math
evaluation do), images named rather than inlined, and long output cut to its head and tail.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ExecutionStatus(StrEnum):
    """How a cell ended: the code's own outcome (ok, error) or the sandbox's verdict."""

    OK = "ok"
    ERROR = "error"  # the code raised
    TIMEOUT = "timeout"  # past the wall-clock limit, interrupted; the kernel and its state survive
    KILLED = "killed"  # past the limit and deaf to the interrupt: the kernel was killed and replaced
    CRASHED = "crashed"  # the kernel died while running the cell (os._exit, segfault, OOM kill, kill -9)


class ExecutionError(BaseModel):
    """The exception a cell raised (ANSI codes stripped from the traceback)."""

    ename: str
    evalue: str
    traceback: list[str] = Field(default_factory=list)

    def condensed(self) -> str:
        """The last frame's pointer lines and the error line, as shown to a model."""
        line = f"{self.ename}: {self.evalue}" if self.evalue else self.ename
        # IPython's list is [separator, header, frame, ..., frame, error line]; frames hold context lines.
        frames = self.traceback[1:-1] if len(self.traceback) >= 3 else []
        if not frames:
            return line
        kept = [
            ln.rstrip()
            for ln in frames[-1].splitlines()
            if ln.lstrip().startswith(("---->", "Cell In", "File ")) and ln.strip()
        ]
        return "\n".join([*kept, line])


class ImageRef(BaseModel):
    """An image a cell displayed, kept by reference: prompts name it, they never inline it."""

    mime: str
    size_bytes: int
    sha256: str
    data_b64: str = Field(
        default="", repr=False, description="The image itself, when within the capture bound."
    )


class DisplayOutput(BaseModel):
    """One ``execute_result`` or ``display_data`` message."""

    text: str | None = None
    images: list[ImageRef] = Field(default_factory=list)
    is_result: bool = Field(
        default=False, description="True for the cell's value (Out[n]), False for display()."
    )


class ExecutionResult(BaseModel):
    """Everything one cell produced, and how it ended."""

    model_config = ConfigDict(extra="forbid")

    status: ExecutionStatus
    stdout: str = ""
    stderr: str = ""
    outputs: list[DisplayOutput] = Field(default_factory=list)
    error: ExecutionError | None = None
    wall_time_s: float = 0.0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    kernel_restarted: bool = Field(
        default=False, description="The kernel was replaced after this cell: earlier state is gone."
    )
    message: str | None = Field(default=None, description="The sandbox's own note (why a cell was stopped).")
    lost: str | None = Field(
        default=None,
        description="Set when the kernel was lost for a reason outside the cell's code (killed from outside "
        "the sandbox, died while idle, shut down, its zygote died): an infrastructure failure, not the "
        "code's outcome.",
    )

    def prompt_text(self, max_chars: int = 1000) -> str:
        """The output as a model is shown it, at most about ``max_chars`` characters."""
        parts = [strip_ansi(self.stdout)]
        if self.stdout_truncated:
            parts.append("[output truncated by the sandbox]\n")
        for out in self.outputs:
            if out.text is not None:
                parts.append(strip_ansi(out.text) + "\n")
            parts.extend(f"<image {img.mime}, {img.size_bytes} bytes>\n" for img in out.images)
        if self.stderr.strip() and self.error is None:
            parts.append(strip_ansi(self.stderr))
        if self.error is not None:
            parts.append(self.error.condensed() + "\n")
        if self.message:
            parts.append(self.message + "\n")
        return truncate_middle("".join(parts).rstrip("\n"), max_chars)


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


TRUNCATION_MARK = " characters truncated] ..."
"""Part of the line ``truncate_middle`` puts where it cut: a shown output containing it was cut."""


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail of ``text`` with an explicit marker between them."""
    if len(text) <= max_chars:
        return text
    keep = max(max_chars // 2, 1)
    dropped = len(text) - 2 * keep
    return f"{text[:keep]}\n... [{dropped}{TRUNCATION_MARK}\n{text[-keep:]}"
