"""Stop strings over text that arrives in pieces: where generation stops, and what may be shown yet.

A stop string can be split across tokens ("```" as "``" + "`"), so a streaming client must not be
shown text that could still turn out to be the start of one: :class:`StopHoldback` releases text
as it arrives and holds back only the tail that is a prefix of some stop string, until the next
piece says which it is.  :func:`find_stop` is where generation stops in a finished text: at the
stop string that *completes* first, as it does token by token (of two overlapping candidates the
one whose last character comes first; on a tie, the longer one).  Written here because the engines
that apply stop strings do so internally; the backends that apply them themselves (scripted,
OpenAI-compatible servers whose answers are re-checked) share this one rule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """Where the first stop string in ``text`` begins, and which: the match that completes first, as
    in generation (ties: the longer one, which begins earlier).  None if there is none."""
    best: tuple[int, int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        start = text.find(stop)
        if start < 0:
            continue
        key = (start + len(stop), start, stop)
        if best is None or key[:2] < best[:2]:
            best = key
    return None if best is None else (best[1], best[2])


def held_tail(text: str, delimiters: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of one of ``delimiters``: what
    must not be shown yet, because the next characters may complete the delimiter."""
    longest = 0
    for delimiter in delimiters:
        for n in range(min(len(delimiter) - 1, len(text)), longest, -1):
            if text.endswith(delimiter[:n]):
                longest = n
                break
    return longest


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """``text`` up to where generation stops in it, and the stop string; else ``(text, None)``."""
    found = find_stop(text, stops)
    if found is None:
        return text, None
    at, stop = found
    return text[:at], stop


class StopHoldback:
    """Feed pieces of generated text; get back what can be shown, never part of a stop string.

    ``feed`` returns the text now known to precede any stop string, and the stop string once one has
    completed (nothing is released after it); ``flush`` releases what was held back when generation
    ended without one.  The pieces released join to exactly the text before the stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._seen = ""  # all text fed so far
        self._released = 0  # characters of _seen already returned
        self.stop: str | None = None

    def feed(self, piece: str) -> tuple[str, str | None]:
        if self.stop is not None:
            return "", self.stop
        self._seen += piece
        found = find_stop(self._seen, self.stops)
        if found is not None:
            at, self.stop = found
            out = self._seen[self._released : at]
            self._released = at
            return out, self.stop
        safe = len(self._seen) - self._held_tail()
        out = self._seen[self._released : safe]
        self._released = max(self._released, safe)
        return out, None

    def flush(self) -> str:
        """What was held back, once generation has ended without a stop string."""
        if self.stop is not None:
            return ""
        out = self._seen[self._released :]
        self._released = len(self._seen)
        return out

    def _held_tail(self) -> int:
        return held_tail(self._seen, self.stops)


class StreamedText:
    """What a backend's ``stream`` shows of raw text pieces: stop strings held back while pending,
    and at the end exactly the rest of the final ``Completion``'s text, so the pieces a client saw
    always join to that text (an engine's own stop rules and cleanup decide the final text)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._holdback = StopHoldback(stops)
        self.sent = ""

    def piece(self, raw: str) -> str:
        """The part of ``raw`` (and of what was held back before it) that can be shown now."""
        out, _ = self._holdback.feed(raw)
        self.sent += out
        return out

    def rest(self, final: str) -> str:
        """What of ``final`` was not shown yet.  Pieces that turn out not to be its beginning (an
        engine's final decode may differ from its running one) cannot be taken back: the rest is
        then empty and the difference is logged."""
        if not final.startswith(self.sent):
            logger.warning(
                "streamed text diverged from the final text after %d characters; not sending the rest",
                len(self.sent),
            )
            return ""
        out = final[len(self.sent) :]
        self.sent = final
        return out
