"""The trace: what the runtime produces and what training consumes.

A trace is a problem followed by an ordered list of blocks — prose, code cells and the execution
output of those cells — plus the final answer and metadata about how it was produced.  Everything
here is a pydantic model because traces cross process and file boundaries (JSONL on disk, HTTP
responses, training data); ``schema_version`` lets readers reject files they do not understand.

The textual renderings that a model sees live in ``runtime.formats``; they carry the problem and
the blocks but not the metadata, the final answer or the execution status (a model's prompt has no
room for them), so ``Trace.text_view()`` is what a rendering round-trips.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sandbox.result import TRUNCATION_MARK, ExecutionResult
from sandbox.result import ExecutionStatus as ExecutionStatus  # re-exported: traces carry it

SCHEMA_VERSION: Literal[1] = 1


class _Block(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextBlock(_Block):
    """Natural-language reasoning written by the model."""

    kind: Literal["text"] = "text"
    text: str = Field(min_length=1)


class CodeBlock(_Block):
    """A Python cell written by the model, executed in the problem's sandbox session."""

    kind: Literal["code"] = "code"
    code: str


class OutputBlock(_Block):
    """What running the preceding code cell printed, as shown to the model.

    ``status`` is None when the block was parsed back from text, where the status is not written.
    """

    kind: Literal["output"] = "output"
    output: str
    status: ExecutionStatus | None = None


Block = Annotated[TextBlock | CodeBlock | OutputBlock, Field(discriminator="kind")]


class Usage(BaseModel):
    """Token and tool accounting for one trace."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = Field(
        default=0, description="Of prompt_tokens, those the engine served from its cache (not computed)."
    )
    cells: int = 0


class CellProvenance(BaseModel):
    """How one code cell of the trace ran, so that a run explains itself."""

    model_config = ConfigDict(extra="forbid")

    index: int
    status: ExecutionStatus
    wall_time_s: float
    output_chars: int = Field(description="Characters of output shown to the model.")
    truncated: bool = Field(description="The output shown to the model was cut (sandbox or prompt limit).")
    kernel_restarted: bool = False

    @classmethod
    def of(cls, index: int, result: ExecutionResult, shown: str) -> CellProvenance:
        """Provenance of cell ``index`` that ran to ``result`` and was shown to the model as ``shown``."""
        return cls(
            index=index,
            status=result.status,
            wall_time_s=result.wall_time_s,
            output_chars=len(shown),
            truncated=result.stdout_truncated or result.stderr_truncated or TRUNCATION_MARK in shown,
            kernel_restarted=result.kernel_restarted,
        )


class TraceMetadata(BaseModel):
    """Provenance: which model and sampling produced the trace, how long it took, what it cost."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    sampling: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="Named durations in seconds.")
    usage: Usage = Field(default_factory=Usage)
    source: dict[str, Any] = Field(
        default_factory=dict, description="Where the problem came from (data set, row id, seed, ...)."
    )
    format: str | None = Field(default=None, description="The text rendering the model wrote in.")
    stop_reason: str | None = Field(
        default=None, description="Why generation ended (see runtime.loop.StopReason)."
    )
    cells: list[CellProvenance] = Field(default_factory=list)


class Trace(BaseModel):
    """One solution attempt: problem, interleaved blocks, final answer, metadata."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    problem: str
    system: str | None = None
    blocks: list[Block] = Field(default_factory=list)
    final_answer: str | None = None
    metadata: TraceMetadata = Field(default_factory=TraceMetadata)

    @model_validator(mode="after")
    def _check_block_order(self) -> Trace:
        # Two adjacent text blocks would render as one, and an output with no cell before it has
        # no meaning; rejecting both keeps every rendering invertible.
        for i, block in enumerate(self.blocks):
            prev = self.blocks[i - 1] if i else None
            if isinstance(block, TextBlock) and isinstance(prev, TextBlock):
                raise ValueError(f"blocks[{i}]: two adjacent text blocks; merge them into one")
            if isinstance(block, OutputBlock) and not isinstance(prev, CodeBlock):
                raise ValueError(f"blocks[{i}]: an output block must directly follow a code block")
        return self

    @property
    def code_cells(self) -> list[CodeBlock]:
        return [b for b in self.blocks if isinstance(b, CodeBlock)]

    def text_view(self) -> Trace:
        """The part of the trace that a text rendering carries (what ``parse(render(t))`` returns)."""
        blocks: list[Block] = [
            b.model_copy(update={"status": None}) if isinstance(b, OutputBlock) else b for b in self.blocks
        ]
        return Trace(problem=self.problem, system=self.system, blocks=blocks)
