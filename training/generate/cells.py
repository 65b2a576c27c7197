"""A trace being written by a generator (not a model): prose it adds, cells it runs for real.

Teacher-free modes (``gsm8k-calc``, ``backward``) write the code themselves but never the outputs:
every output block is what the sandbox printed for the cell, with the cell's provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.failures import check_cell
from runtime.loop import CellRunner
from runtime.trace import Block, CellProvenance, CodeBlock, OutputBlock, TextBlock
from sandbox.result import ExecutionResult

OUTPUT_CHARS = 2000
"""Output shown in a generated trace at most (head and tail kept), as the runtime would show it."""


@dataclass
class TraceWriter:
    session: CellRunner
    blocks: list[Block] = field(default_factory=list)
    cells: list[CellProvenance] = field(default_factory=list)

    def text(self, text: str) -> None:
        self.blocks.append(TextBlock(text=text))

    async def run(self, code: str) -> tuple[ExecutionResult, str]:
        """Run ``code``, append it and its real output; return the result and the output shown.
        A kernel lost for a reason outside the code raises ``KernelLost`` (an infrastructure failure)."""
        result = check_cell(await self.session.execute(code))
        shown = result.prompt_text(OUTPUT_CHARS)
        self.blocks += [CodeBlock(code=code), OutputBlock(output=shown, status=result.status)]
        self.cells.append(CellProvenance.of(len(self.cells), result, shown))
        return result, shown

    @property
    def where(self) -> str:
        """The last cell, for rejection messages."""
        return f"cell {len(self.cells) - 1}"
