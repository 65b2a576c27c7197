"""An in-memory cell runner for the agent loop's logic tests, beside the real-kernel ones.

``MemorySessions().session`` is a ``SessionFactory`` like ``KernelPool.session``: each session
``exec``s its cells in one namespace of this process and reports them as an ``ExecutionResult``
(stdout; an exception as ``status=error`` with ``ename``/``evalue``).  No isolation, no limits, no
display data: for scripted test cells only, never for model-written code.
"""

from __future__ import annotations

import contextlib
import io
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

from sandbox.result import ExecutionError, ExecutionResult, ExecutionStatus


class MemoryCells:
    """One session: cells share ``namespace``, as they share a kernel's state."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {}
        self.cells: list[str] = []

    async def execute(self, code: str, timeout_s: float | None = None) -> ExecutionResult:
        self.cells.append(code)
        out = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"<cell {len(self.cells)}>", "exec"), self.namespace)
        except Exception as exc:
            error = ExecutionError(
                ename=type(exc).__name__, evalue=str(exc), traceback=traceback.format_exception_only(exc)
            )
            return ExecutionResult(
                status=ExecutionStatus.ERROR, stdout=out.getvalue(), error=error,
                wall_time_s=time.perf_counter() - start,
            )  # fmt: skip
        return ExecutionResult(
            status=ExecutionStatus.OK, stdout=out.getvalue(), wall_time_s=time.perf_counter() - start
        )


class MemorySessions:
    """A ``SessionFactory`` of ``MemoryCells``; ``opened`` lists every session it leased."""

    def __init__(self) -> None:
        self.opened: list[MemoryCells] = []

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[MemoryCells]:
        cells = MemoryCells()
        self.opened.append(cells)
        yield cells
