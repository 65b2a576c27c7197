"""The MathCoder rendering: blocks delimited by special tokens.

Follows the layout of MathCoder's released inference code (mathllm/MathCoder, ``src/inference.py``):

    <|system|><|text|>SYSTEM<|endofblock|><|endofmessage|>
    <|user|><|text|>PROBLEM<|endofblock|><|endofmessage|>
    <|assistant|><|text|>...<|endofblock|><|code|>...<|endofblock|><|execution|>...<|endofblock|>...<|endofmessage|>

(without the line breaks).  Generation stops at ``<|endofblock|>`` and ``<|endofmessage|>``; after a
``<|code|>`` block the runtime runs the cell and appends the ``<|execution|>`` block itself, so that
whole block is runtime-written and masked in training.
"""

from __future__ import annotations

import re
from typing import ClassVar

from runtime.backends.stops import held_tail
from runtime.formats.base import TraceFormat, TraceParseError, require_output_after_code
from runtime.trace import Block, CodeBlock, OutputBlock, TextBlock

SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TEXT = "<|text|>"
CODE = "<|code|>"
EXECUTION = "<|execution|>"
END_BLOCK = "<|endofblock|>"
END_MESSAGE = "<|endofmessage|>"
SPECIAL_TOKENS = (SYSTEM, USER, ASSISTANT, TEXT, CODE, EXECUTION, END_BLOCK, END_MESSAGE)

_BLOCK = re.compile(
    "(" + "|".join(re.escape(t) for t in (TEXT, CODE, EXECUTION)) + ")(.*?)" + re.escape(END_BLOCK), re.S
)


class MathCoderFormat(TraceFormat):
    name: ClassVar[str] = "mathcoder"
    stop_strings: ClassVar[tuple[str, ...]] = (END_BLOCK, END_MESSAGE)
    end_of_turn: ClassVar[str] = END_MESSAGE
    reserved: ClassVar[tuple[str, ...]] = SPECIAL_TOKENS

    def render_prompt(self, problem: str, system: str | None) -> str:
        head = "" if system is None else f"{SYSTEM}{TEXT}{system}{END_BLOCK}{END_MESSAGE}"
        return f"{head}{USER}{TEXT}{problem}{END_BLOCK}{END_MESSAGE}{ASSISTANT}"

    def parse_prompt(self, text: str) -> tuple[str, str | None, int]:
        pos, system = 0, None
        if text.startswith(SYSTEM):
            system, pos = self._message_text(text, len(SYSTEM), "system")
        if not text.startswith(USER, pos):
            raise TraceParseError(f"mathcoder: expected {USER} at character {pos}")
        problem, pos = self._message_text(text, pos + len(USER), "user")
        if not text.startswith(ASSISTANT, pos):
            raise TraceParseError(f"mathcoder: expected {ASSISTANT} at character {pos}")
        return problem, system, pos + len(ASSISTANT)

    @staticmethod
    def _message_text(text: str, pos: int, role: str) -> tuple[str, int]:
        opener = TEXT
        closer = END_BLOCK + END_MESSAGE
        end = text.find(closer, pos)
        if not text.startswith(opener, pos) or end < 0:
            raise TraceParseError(
                f"mathcoder: the {role} message at character {pos} is not {opener}...{closer}"
            )
        return text[pos + len(opener) : end], end + len(closer)

    def render_block(self, block: Block, *, first: bool) -> tuple[str, tuple[int, int] | None]:
        if isinstance(block, TextBlock):
            return f"{TEXT}{block.text}{END_BLOCK}", None
        if isinstance(block, CodeBlock):
            return f"{CODE}{block.code}{END_BLOCK}", None
        piece = self.execution_text(block.output)
        return piece, (0, len(piece))

    @staticmethod
    def execution_text(output: str) -> str:
        """The block the runtime appends after running a cell."""
        return f"{EXECUTION}{output}{END_BLOCK}"

    def split_cell(self, pending: str) -> tuple[str, str] | None:
        start = pending.rfind(CODE)
        if start < 0 or not pending.endswith(END_BLOCK):
            return None
        code = pending[start + len(CODE) : len(pending) - len(END_BLOCK)]
        if any(t in code for t in SPECIAL_TOKENS):
            return None
        return self.plain_text(pending[:start]), code

    def output_suffix(self, pending: str, output: str) -> str:
        return self.execution_text(output)

    def stream_view(self, pending: str, *, final: bool = False) -> tuple[str, str | None]:
        start = pending.rfind(CODE)
        if start >= 0 and END_BLOCK not in pending[start:]:
            code = pending[start + len(CODE) :]
            if not final:
                code = code[: len(code) - held_tail(code, SPECIAL_TOKENS)]
            return self.plain_text(pending[:start]), code
        if not final:
            pending = pending[: len(pending) - held_tail(pending, SPECIAL_TOKENS)]
        return self.plain_text(pending), None

    def plain_text(self, pending: str) -> str:
        """The bodies of the text blocks, a last one still open included, one per line."""
        bodies = [m.group(2) for m in _BLOCK.finditer(pending) if m.group(1) == TEXT]
        opened = pending.rfind(TEXT)
        if opened >= 0 and END_BLOCK not in pending[opened:]:
            bodies.append(pending[opened + len(TEXT) :])
        if bodies:
            return "\n".join(bodies)
        for token in SPECIAL_TOKENS:  # a model that forgot the block structure
            pending = pending.replace(token, "")
        return pending

    def parse_blocks(self, text: str) -> list[Block]:
        blocks: list[Block] = []
        pos = 0
        while pos < len(text):
            match = _BLOCK.match(text, pos)
            if match is None:
                raise TraceParseError(
                    f"mathcoder: expected a block at character {pos}: {text[pos : pos + 40]!r}"
                )
            opener, body = match.group(1), match.group(2)
            stray = next((t for t in SPECIAL_TOKENS if t in body), None)
            if stray is not None:
                raise TraceParseError(f"mathcoder: unexpected {stray} inside the block at character {pos}")
            if opener == TEXT:
                if not body:
                    raise TraceParseError(f"mathcoder: empty text block at character {pos}")
                blocks.append(TextBlock(text=body))
            elif opener == CODE:
                blocks.append(CodeBlock(code=body))
            else:
                require_output_after_code(blocks, self.name, pos)
                blocks.append(OutputBlock(output=body))
            pos = match.end()
        return blocks
