"""The Markdown tool-integrated-reasoning (TIR) rendering used by ToRA and Qwen2.5-Math-Instruct.

The model writes prose, then a fenced ```` ```python ```` cell, then the fence ```` ```output ````;
generation stops there and the runtime appends the cell's output and the closing fence:

    prose
    ```python
    code
    ```
    ```output
    what the cell printed
    ```
    more prose

The turn is framed in ChatML (``<|im_start|>role ... <|im_end|>``), the chat template of both
Qwen2.5-Math and the default model (SmolLM2); a model with another chat template gets the
model's turn from ``render_blocks`` and frames it with its tokenizer instead.

So that every rendering parses back, no block may contain a triple backtick and no message may
contain the ChatML markers.  A code cell that is not the first thing in the turn is preceded by a
line break that belongs to the fence, not to the prose before it.
"""

from __future__ import annotations

from typing import ClassVar

from runtime.backends.stops import held_tail
from runtime.formats.base import TraceFormat, TraceParseError, require_output_after_code
from runtime.trace import Block, CodeBlock, OutputBlock, TextBlock

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
FENCE = "```"
CODE_OPEN = "```python\n"
OUTPUT_OPEN = "```output"
CLOSE = "\n```\n"
# Weak models also close a cell by writing the output fence straight after the code, without the
# closing fence's own line (```` ```python\ncode\n```output ````): the cell is closed all the same.
# Read as prose, its code would never run and the model would go on to invent the output.
MERGED_CLOSE = "\n" + OUTPUT_OPEN


class MarkdownFormat(TraceFormat):
    name: ClassVar[str] = "markdown"
    # The closing fence too: weak models close a cell and go on without writing ```output.
    stop_strings: ClassVar[tuple[str, ...]] = (OUTPUT_OPEN, CLOSE)
    end_of_turn: ClassVar[str] = IM_END
    reserved: ClassVar[tuple[str, ...]] = (FENCE, IM_START, IM_END)

    def render_prompt(self, problem: str, system: str | None) -> str:
        head = "" if system is None else f"{IM_START}system\n{system}{IM_END}\n"
        return f"{head}{IM_START}user\n{problem}{IM_END}\n{IM_START}assistant\n"

    def parse_prompt(self, text: str) -> tuple[str, str | None, int]:
        pos, system = 0, None
        if text.startswith(f"{IM_START}system\n"):
            system, pos = self._message(text, 0, "system")
        problem, pos = self._message(text, pos, "user")
        opener = f"{IM_START}assistant\n"
        if not text.startswith(opener, pos):
            raise TraceParseError(f"markdown: expected {opener!r} at character {pos}")
        return problem, system, pos + len(opener)

    @staticmethod
    def _message(text: str, pos: int, role: str) -> tuple[str, int]:
        opener, closer = f"{IM_START}{role}\n", f"{IM_END}\n"
        end = text.find(closer, pos)
        if not text.startswith(opener, pos) or end < 0:
            raise TraceParseError(f"markdown: expected a {role} message at character {pos}")
        return text[pos + len(opener) : end], end + len(closer)

    def render_block(self, block: Block, *, first: bool) -> tuple[str, tuple[int, int] | None]:
        if isinstance(block, TextBlock):
            return block.text, None
        if isinstance(block, CodeBlock):
            return ("" if first else "\n") + CODE_OPEN + block.code + CLOSE, None
        tail = self.execution_text(block.output)
        # The model writes the ```output fence (it is the stop string); the runtime writes the rest.
        return OUTPUT_OPEN + tail, (len(OUTPUT_OPEN), len(OUTPUT_OPEN) + len(tail))

    @staticmethod
    def execution_text(output: str) -> str:
        """What the runtime appends after the model stopped at the ```output fence."""
        return f"\n{output}{CLOSE}"

    def parse_blocks(self, text: str) -> list[Block]:
        blocks: list[Block] = []
        pos = 0
        while True:
            fence = text.find(FENCE, pos)
            if fence < 0:
                if pos < len(text):
                    blocks.append(TextBlock(text=text[pos:]))
                return blocks
            if text.startswith(CODE_OPEN, fence):
                if fence > pos:
                    if text[fence - 1] != "\n":
                        raise TraceParseError(
                            f"markdown: a code fence at character {fence} does not start a line"
                        )
                    if fence - 1 > pos:
                        blocks.append(TextBlock(text=text[pos : fence - 1]))
                elif fence > 0:
                    raise TraceParseError(f"markdown: a code fence at character {fence} lacks its line break")
                body_start = fence + len(CODE_OPEN)
                code, pos = self._fenced_body(text, body_start)
                blocks.append(CodeBlock(code=code))
            elif text.startswith(OUTPUT_OPEN + "\n", fence) and fence == pos:
                require_output_after_code(blocks, self.name, fence)
                output, pos = self._fenced_body(text, fence + len(OUTPUT_OPEN) + 1)
                blocks.append(OutputBlock(output=output))
            else:
                raise TraceParseError(
                    f"markdown: unexpected fence at character {fence}: {text[fence : fence + 20]!r}"
                )

    def split_cell(self, pending: str) -> tuple[str, str] | None:
        body = pending.removesuffix(OUTPUT_OPEN)
        if body.endswith(CLOSE):
            end = len(body) - len(CLOSE)
        elif pending.endswith(MERGED_CLOSE):
            end = len(pending) - len(MERGED_CLOSE)
        else:
            return None
        start = body.rfind(CODE_OPEN)
        if start < 0 or end < start + len(CODE_OPEN):
            return None
        code = body[start + len(CODE_OPEN) : end]
        if FENCE in code:
            return None
        prose = body[:start]
        return prose.removesuffix("\n") if start > 0 else prose, code

    def stream_view(self, pending: str, *, final: bool = False) -> tuple[str, str | None]:
        start = pending.rfind(CODE_OPEN)
        if start < 0:
            if final:
                return pending, None
            # The fence's own line break too: it is not prose if a cell opens after it.
            held = len(pending) if CODE_OPEN.startswith(pending) else held_tail(pending, ("\n" + CODE_OPEN,))
            return pending[: len(pending) - held], None
        prose = pending[:start]
        code = pending[start + len(CODE_OPEN) :]
        closed = min((at for at in (code.find(CLOSE), code.find(MERGED_CLOSE)) if at >= 0), default=-1)
        if closed >= 0:
            code = code[:closed]
        elif not final:
            code = code[: len(code) - held_tail(code, (CLOSE, MERGED_CLOSE))]
        return (prose.removesuffix("\n") if start > 0 else prose), code

    def output_suffix(self, pending: str, output: str) -> str:
        opener = "" if pending.endswith(OUTPUT_OPEN) else OUTPUT_OPEN
        return opener + self.execution_text(output)

    def plain_text(self, pending: str) -> str:
        return pending

    @staticmethod
    def _fenced_body(text: str, start: int) -> tuple[str, int]:
        """The body of a fenced block that starts at ``start``, and the position after its close."""
        close = text.find(FENCE, start)
        if close < 0 or close == start or not text.startswith(CLOSE, close - 1):
            raise TraceParseError(
                f"markdown: the fenced block at character {start} is not closed by {CLOSE!r}"
            )
        return text[start : close - 1], close - 1 + len(CLOSE)
