"""Typed deltas of a turn being written: the prose and the code the model has written so far, as
``ProseDelta`` and ``CodeDelta`` events.

The format's ``stream_view`` says what the text since the last output holds (delimiters left out,
a tail that may begin one held back); this class sends what it adds each time.  ``settle`` sends
the rest once the loop knows a segment's exact prose and code (a cell closed, or the turn ended),
so a trajectory's deltas join to exactly its trace's text and code blocks.
"""

from __future__ import annotations

import logging

from runtime.events import CodeDelta, ProseDelta
from runtime.formats import TraceFormat

logger = logging.getLogger(__name__)


class TypedDeltas:
    """One trajectory's typed deltas; ``next_segment`` after each output the runtime appends."""

    def __init__(self, fmt: TraceFormat) -> None:
        self.fmt = fmt
        self.prose = ""  # prose sent for the current segment
        self.code = ""  # code sent for the current segment's open cell
        self.diverged = False

    def update(self, pending: str, cell: int) -> list[ProseDelta | CodeDelta]:
        """Deltas for the text since the last output, ``pending``, while it is being written."""
        prose, code = self.fmt.stream_view(pending)
        return self.settle(prose, code, cell)

    def settle(self, prose: str, code: str | None, cell: int) -> list[ProseDelta | CodeDelta]:
        """Deltas up to this segment's known ``prose`` and ``code`` (of cell number ``cell``)."""
        out: list[ProseDelta | CodeDelta] = []
        if self.diverged:
            return out
        if not prose.startswith(self.prose) or (code is not None and not code.startswith(self.code)):
            # Cannot be taken back; a format whose view does not only grow would get here.
            logger.warning("typed deltas diverged from the trace; no more deltas for this trajectory")
            self.diverged = True
            return out
        if len(prose) > len(self.prose):
            out.append(ProseDelta(text=prose[len(self.prose) :]))
            self.prose = prose
        if code is not None and len(code) > len(self.code):
            out.append(CodeDelta(index=cell, text=code[len(self.code) :]))
            self.code = code
        return out

    def next_segment(self) -> None:
        self.prose = self.code = ""
