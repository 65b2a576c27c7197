"""What the agent loop reports while it works: one typed event stream for the CLI, server and harness."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from runtime.trace import Trace
from sandbox.result import ExecutionResult


class TextDelta(BaseModel):
    """Model text as it arrives, delimiters and stop strings included: a trajectory's text deltas
    join to exactly what the model wrote (its turn without the runtime-written outputs)."""

    type: Literal["text"] = "text"
    text: str


class ProseDelta(BaseModel):
    """Prose as it arrives, with the format's delimiters left out (held back until known not to be
    one): a trajectory's prose and code deltas, in order, join to its trace's text and code blocks."""

    type: Literal["prose_delta"] = "prose_delta"
    text: str


class CodeDelta(BaseModel):
    """Code of cell ``index`` as it arrives (the cell is announced whole by ``CodeCell`` when it closes)."""

    type: Literal["code_delta"] = "code_delta"
    index: int
    text: str


class CodeCell(BaseModel):
    """The model closed a code cell; it runs next."""

    type: Literal["code"] = "code"
    index: int
    code: str


class ExecutionStarted(BaseModel):
    type: Literal["execution_started"] = "execution_started"
    index: int


class ExecutionFinished(BaseModel):
    """A cell ran: the full result, and the output text the model is shown."""

    type: Literal["execution"] = "execution"
    index: int
    result: ExecutionResult
    output: str


class FinalAnswer(BaseModel):
    """The trajectory ended: its answer (None if none was found), why it ended, the whole trace."""

    type: Literal["final"] = "final"
    answer: str | None
    stop_reason: str
    trace: Trace


class ErrorEvent(BaseModel):
    """The trajectory failed for a reason outside the model's control (backend or sandbox failure)."""

    type: Literal["error"] = "error"
    message: str
    trace: Trace | None = None


Event = Annotated[
    TextDelta
    | ProseDelta
    | CodeDelta
    | CodeCell
    | ExecutionStarted
    | ExecutionFinished
    | FinalAnswer
    | ErrorEvent,
    Field(discriminator="type"),
]
