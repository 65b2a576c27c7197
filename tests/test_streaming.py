"""Token streaming through the loop: typed deltas join to the trace, delimiters never leak.

A scripted model writes random turns (prose, code cells, an answer) cut into random pieces, so
that every delimiter and stop string is split at every position somewhere in the examples; the
loop runs the cells on the in-memory runner.  Whatever the cut, the prose deltas join to the
trace's text blocks, each cell's code deltas to its code, the raw text deltas to what the model
wrote, and no prose or code delta holds any part of a fence.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cells import MemorySessions

from runtime.backends.scripted import ScriptedBackend, Step
from runtime.events import CodeDelta, Event, FinalAnswer, ProseDelta, TextDelta
from runtime.formats import get_format
from runtime.loop import run_trajectory
from runtime.prompts import get_preset
from runtime.trace import CodeBlock, TextBlock

TIR = get_preset("tir")
FENCE = "```"

# Prose and code made of pieces that look like the delimiters' beginnings and ends, so cuts land
# inside near-misses as well as inside the real fences.
_PROSE_BITS = ["Let", " me", " compute", ".", "\n", "`", "``", " x", "\n\n", "python", " so"]
_CODE_BITS = ["x", " = ", "1", "\n", "print(x)", "`", "``", "  ", "y"]


def no_fence(text: str) -> str:
    while FENCE in text:
        text = text.replace(FENCE, "")
    return text


@st.composite
def turns(draw: st.DrawFn) -> list[str]:
    """The steps of one trajectory: up to three cells, then an answer."""
    steps = []
    for _ in range(draw(st.integers(0, 3))):
        prose = no_fence("".join(draw(st.lists(st.sampled_from(_PROSE_BITS), max_size=6))))
        code = no_fence("".join(draw(st.lists(st.sampled_from(_CODE_BITS), min_size=1, max_size=6))))
        code = code.strip("\n`") or "x"  # a backtick next to the closing fence would lengthen it
        opener = "" if not prose else ("" if prose.endswith("\n") else "\n")
        # Closed by its own fence, or (as weak models do) by the output fence straight after the code.
        close = draw(st.sampled_from(["\n```\n", "\n```output"]))
        steps.append(f"{prose}{opener}```python\n{code}{close}")
    tail = no_fence("".join(draw(st.lists(st.sampled_from(_PROSE_BITS), max_size=6))))
    steps.append(f"{tail} So \\boxed{{7}}.")
    return steps


def cutter(cuts: list[int]):  # type: ignore[no-untyped-def]
    """Cut a step's text into pieces at the drawn positions (each taken modulo the text's length)."""

    def tokens(text: str) -> list[str]:
        at = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
        return [text[a:b] for a, b in itertools.pairwise(at) if b > a]

    return tokens


async def run(steps: list[str], cuts: list[int]) -> tuple[list[Event], int]:
    """The trajectory's events, and how many steps the model was asked for (a cell that fails the
    same way twice ends it early)."""
    scripted = [Step(s) for s in steps[:-1]] + [Step(steps[-1], eos=True)]
    backend = ScriptedBackend({"Q": scripted}, tokens=cutter(cuts))
    sessions = MemorySessions().session
    handler = _Records()
    logging.getLogger("runtime").addHandler(handler)
    try:
        events = [e async for e in run_trajectory("Q", backend=backend, sessions=sessions, preset=TIR)]
    finally:
        logging.getLogger("runtime").removeHandler(handler)
    # A view that had to take text back stops the deltas and says so: never, for any cut.
    assert [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING] == []
    return events, len(backend.requests)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns(), st.lists(st.integers(0, 400), max_size=40))
def test_deltas_join_to_the_trace_and_hold_no_delimiter(steps: list[str], cuts: list[int]) -> None:
    events, asked = asyncio.run(run(steps, cuts))
    final = events[-1]
    assert isinstance(final, FinalAnswer), final
    blocks = final.trace.blocks
    prose = [e.text for e in events if isinstance(e, ProseDelta)]
    assert "".join(prose) == "".join(b.text for b in blocks if isinstance(b, TextBlock))
    codes = [b.code for b in blocks if isinstance(b, CodeBlock)]
    for index, code in enumerate(codes):
        assert "".join(e.text for e in events if isinstance(e, CodeDelta) and e.index == index) == code
    assert not any(isinstance(e, CodeDelta) and e.index >= len(codes) for e in events)
    assert all(FENCE not in d.text for d in events if isinstance(d, ProseDelta | CodeDelta))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "".join(steps[:asked])


def test_a_delimiter_cut_at_every_position_never_shows() -> None:
    """The fixed case the property covers at random: the opening fence split at each character."""
    text = "Let me compute.\n```python\nprint(6 * 7)\n```\n"
    for at in range(1, len(text)):
        events, _ = asyncio.run(run([text, "So \\boxed{42}."], [at]))
        prose = "".join(e.text for e in events if isinstance(e, ProseDelta))
        code = "".join(e.text for e in events if isinstance(e, CodeDelta))
        assert (prose, code) == ("Let me compute.So \\boxed{42}.", "print(6 * 7)"), at


def test_the_markdown_view_never_shows_a_closing_fence_as_code() -> None:
    """Whatever a backend holds back, the format's view alone only grows through either close."""
    fmt = get_format("markdown")
    for text in ("Let me compute.\n```python\nx = 1\n```output", "Let me compute.\n```python\nx = 1\n```\n"):
        for k in range(len(text) + 1):
            prose, code = fmt.stream_view(text[:k])
            assert "Let me compute.".startswith(prose), (text, k)
            assert code is None or "x = 1".startswith(code), (text, k)
