"""What every text rendering of a trace provides, and the rendered result with its masks.

A format turns a ``Trace`` into the exact text a model reads and writes, and back.  It owns, in
one place, the four things that must agree with each other: the rendering, the parser, the stop
strings that end a generation step, and the character spans that the runtime (not the model)
wrote — execution outputs — which training masks out of the loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from runtime.trace import Block, CodeBlock, TextBlock, Trace


class TraceFormatError(ValueError):
    """A trace cannot be rendered in a format, or a text cannot be parsed as one."""


class UnrenderableTrace(TraceFormatError):
    """A block contains a delimiter of the format, so its rendering would not parse back."""


class TraceParseError(TraceFormatError):
    """A text is not a well-formed rendering of the format."""


def flag_runs(flags: Sequence[bool]) -> list[tuple[int, int, bool]]:
    """The maximal runs of equal flags as half-open ``(start, end, flag)`` ranges (the one place
    that cuts a loss mask into trained and masked pieces: SFT segments, the mask visualiser)."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            runs.append((start, i, flags[start]))
            start = i
    return runs


@dataclass(frozen=True)
class Rendered:
    """A rendering plus which characters the model is trained on.

    ``prompt_end`` is where the model's own turn begins; ``output_spans`` are half-open character
    ranges inside the turn that the runtime inserted (execution output and its delimiters).
    """

    text: str
    prompt_end: int = 0
    output_spans: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    def trained(self) -> list[bool]:
        """One flag per character: True where a training loss applies."""
        mask = [i >= self.prompt_end for i in range(len(self.text))]
        for start, end in self.output_spans:
            mask[start:end] = [False] * (end - start)
        return mask

    def segments(self) -> list[tuple[str, bool]]:
        """The text cut into maximal trained / masked pieces: ``(text, trained)``."""
        return [(self.text[start:end], flag) for start, end, flag in flag_runs(self.trained())]

    def shifted(self, offset: int) -> Rendered:
        return Rendered(
            text=self.text,
            prompt_end=self.prompt_end + offset,
            output_spans=tuple((s + offset, e + offset) for s, e in self.output_spans),
        )


class TraceFormat(ABC):
    """A textual rendering of traces; subclasses fill in the delimiters."""

    name: ClassVar[str]
    # Generation stops at any of these; the runtime then runs the cell that just closed, if any.
    stop_strings: ClassVar[tuple[str, ...]]
    # Closes the model's turn; the model is trained to write it, so it must learn to stop.
    end_of_turn: ClassVar[str]
    # Substrings no block may contain, because the parser would take them for delimiters.
    reserved: ClassVar[tuple[str, ...]]

    # -- the pieces -------------------------------------------------------------------------------
    @abstractmethod
    def render_prompt(self, problem: str, system: str | None) -> str:
        """Everything before the model's turn, ending where the model starts writing."""

    @abstractmethod
    def parse_prompt(self, text: str) -> tuple[str, str | None, int]:
        """Inverse of ``render_prompt`` on a full rendering: (problem, system, end of the prompt)."""

    @abstractmethod
    def render_block(self, block: Block, *, first: bool) -> tuple[str, tuple[int, int] | None]:
        """One block's text and, for an output block, the span (relative to it) the runtime wrote."""

    @staticmethod
    @abstractmethod
    def execution_text(output: str) -> str:
        """The text the runtime appends to the model's turn after running a cell (masked in training)."""

    @abstractmethod
    def parse_blocks(self, text: str) -> list[Block]:
        """Inverse of rendering a block sequence (the model's turn without its end marker)."""

    # -- what the agent loop needs while the model writes ------------------------------------------
    @abstractmethod
    def split_cell(self, pending: str) -> tuple[str, str] | None:
        """If ``pending`` (model text since the last output, stop string included) ends with a
        closed code cell: the prose before the cell and the cell's code; else None."""

    @abstractmethod
    def stream_view(self, pending: str, *, final: bool = False) -> tuple[str, str | None]:
        """What ``pending`` (model text since the last output, possibly cut mid-delimiter) has written
        so far: its prose as a trace's text block would hold it, and the code of a cell it opened and
        has not closed (None if none).  While writing (``final`` false), a tail that may be the start
        of a delimiter is left out until the next characters decide; the view only ever grows.  With
        ``final`` it is what the trace records when the turn ends here."""

    @abstractmethod
    def output_suffix(self, pending: str, output: str) -> str:
        """What the runtime appends to the model's turn after running the cell that ends ``pending``."""

    @abstractmethod
    def plain_text(self, pending: str) -> str:
        """``pending`` prose without the format's block delimiters (for a trace's text block)."""

    def sanitize(self, text: str) -> str:
        """``text`` with every reserved delimiter defused (a zero-width space after its first
        character), so that runtime-written output can never be read as a block boundary."""
        for token in self.reserved:
            text = text.replace(token, token[0] + "\u200b" + token[1:])
        return text

    # -- composed ---------------------------------------------------------------------------------
    def check(self, trace: Trace) -> None:
        """Raise ``UnrenderableTrace`` naming the first place that holds a reserved delimiter."""
        places: list[tuple[str, str]] = [("problem", trace.problem)]
        if trace.system is not None:
            places.append(("system", trace.system))
        for i, block in enumerate(trace.blocks):
            places.append((f"blocks[{i}] ({block.kind})", _content(block)))
        for where, content in places:
            for token in self.reserved:
                if token in content:
                    raise UnrenderableTrace(f"{self.name}: {where} contains the delimiter {token!r}")

    def render_blocks(self, blocks: Sequence[Block]) -> Rendered:
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        offset = 0
        for i, block in enumerate(blocks):
            piece, span = self.render_block(block, first=i == 0)
            if span is not None:
                spans.append((offset + span[0], offset + span[1]))
            parts.append(piece)
            offset += len(piece)
        return Rendered(text="".join(parts), output_spans=tuple(spans))

    def render(self, trace: Trace) -> Rendered:
        """The whole conversation: prompt, the model's turn, and its end-of-turn marker."""
        self.check(trace)
        prompt = self.render_prompt(trace.problem, trace.system)
        turn = self.render_blocks(trace.blocks).shifted(len(prompt))
        return Rendered(
            text=prompt + turn.text + self.end_of_turn,
            prompt_end=len(prompt),
            output_spans=turn.output_spans,
        )

    def parse(self, text: str) -> Trace:
        """Inverse of ``render``: returns ``trace.text_view()`` for the trace that was rendered."""
        problem, system, prompt_end = self.parse_prompt(text)
        if not text.endswith(self.end_of_turn):
            raise TraceParseError(f"{self.name}: the text does not end with {self.end_of_turn!r}")
        blocks = self.parse_blocks(text[prompt_end : len(text) - len(self.end_of_turn)])
        return Trace(problem=problem, system=system, blocks=blocks)


def _content(block: Block) -> str:
    if isinstance(block, TextBlock):
        return block.text
    if isinstance(block, CodeBlock):
        return block.code
    return block.output


def require_output_after_code(blocks: list[Block], fmt: str, where: int) -> None:
    """Parsers call this before appending an output block (the same rule ``Trace`` enforces)."""
    if not blocks or not isinstance(blocks[-1], CodeBlock):
        raise TraceParseError(f"{fmt}: execution output at character {where} does not follow a code cell")
