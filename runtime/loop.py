"""The agent loop: generate until a code cell closes, run it, feed its output back, repeat.

One trajectory is an async generator of events (``runtime.events``); the CLI, the server and the
benchmark harness consume the same stream.  The sandbox session is leased lazily — at the first
cell — so trajectories that never write code hold no kernel, and it is returned (and its kernel
killed) when the trajectory ends, however it ends: answer, limit, error or cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from runtime.answers import extract_answer
from runtime.backends.base import Backend, BackendError, Completion, CompletionRequest, SamplingParams
from runtime.deltas import TypedDeltas
from runtime.events import (
    CodeCell,
    ErrorEvent,
    Event,
    ExecutionFinished,
    ExecutionStarted,
    FinalAnswer,
    TextDelta,
)
from runtime.failures import INFRASTRUCTURE_ERRORS, check_cell
from runtime.formats import TraceFormat
from runtime.prompts import PromptPreset
from runtime.trace import (
    Block,
    CellProvenance,
    CodeBlock,
    OutputBlock,
    TextBlock,
    Trace,
    TraceMetadata,
    Usage,
)
from sandbox.result import ExecutionResult, truncate_middle


class CellRunner(Protocol):
    """Runs cells with shared state: a sandbox ``Session``, or anything that wraps one."""

    async def execute(self, code: str, timeout_s: float | None = None) -> ExecutionResult: ...


SessionFactory = Callable[[], AbstractAsyncContextManager[CellRunner]]
"""Leases a sandbox session, e.g. ``KernelPool.session``."""


class StopReason(StrEnum):
    ANSWER = "answer"  # a boxed answer was written and the model went on without a cell
    EOS = "eos"  # the model ended its turn
    MAX_ROUNDS = "max_rounds"
    MAX_TOKENS = "max_tokens"
    WALL_TIME = "wall_time"
    REPEATED_CELL = "repeated_cell"  # the same code again: it would print the same again
    REPEATED_ERROR = "repeated_error"  # the same error twice in a row: the model is stuck


DEFAULT_MAX_TOKENS = 1024
"""The one default token budget of a trajectory: the loop, `solve`, `bench`, `generate` and the server's
requests without one all use it."""


class LoopLimits(BaseModel):
    """Budgets of one trajectory, each with its unit in its name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_rounds: int = Field(default=8, ge=0, description="Most code cells executed.")
    max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS, ge=1, description="Most tokens the model writes in all."
    )
    step_tokens: int = Field(default=512, ge=1, description="Most tokens per generation step.")
    wall_time_s: float = Field(default=300.0, gt=0, description="Whole-trajectory time budget.")
    cell_timeout_s: float | None = Field(
        default=None, gt=0, description="Per-cell limit; None: the sandbox's."
    )
    output_chars: int = Field(default=1000, ge=80, description="Output shown to the model, in characters.")
    output_tokens: int | None = Field(
        default=None, ge=8, description="Output shown to the model, in tokens of the model's tokenizer."
    )


def shape_output(result: ExecutionResult, fmt: TraceFormat, limits: LoopLimits, backend: Backend) -> str:
    """The output as the model will read it: condensed, cut to the character and token limits, and
    with the format's delimiters defused."""
    text = result.prompt_text(limits.output_chars)
    if limits.output_tokens is not None:
        full = text
        chars = len(full)
        while chars > 16 and backend.count_tokens(text) > limits.output_tokens:
            chars = int(chars * 0.8)
            text = truncate_middle(full, chars)
    return fmt.sanitize(text)


async def run_trajectory(
    problem: str,
    *,
    backend: Backend,
    sessions: SessionFactory,
    preset: PromptPreset,
    limits: LoopLimits | None = None,
    sampling: SamplingParams | None = None,
    model: str | None = None,
    source: dict[str, object] | None = None,
) -> AsyncIterator[Event]:
    """Solve ``problem``; the last event is a ``FinalAnswer`` or an ``ErrorEvent``."""
    limits = limits or LoopLimits()
    sampling = sampling or SamplingParams()
    fmt = preset.trace_format
    prompt = preset.render(problem, backend)
    started = time.monotonic()
    deadline = started + limits.wall_time_s
    loop_deadline = asyncio.get_running_loop().time() + limits.wall_time_s  # the same, on the loop's clock
    turn = ""  # the model's turn so far, runtime-written output included
    pending_start = 0  # where the text since the last output begins
    blocks: list[Block] = []
    usage = Usage()
    timings = {"generate_s": 0.0, "execute_s": 0.0}
    provenance: list[CellProvenance] = []
    last_code: str | None = None
    last_error: tuple[str, str] | None = None
    deltas = TypedDeltas(fmt)

    def last_segment() -> tuple[str, str | None]:
        """The prose and unclosed cell the turn ends with (after its last output or closed cell)."""
        return fmt.stream_view(turn[pending_start:], final=True)

    def trace(stop: str | None) -> Trace:
        prose, unclosed = last_segment()
        final_blocks = list(blocks)
        if prose:
            final_blocks.append(TextBlock(text=prose))
        if unclosed is not None:  # written, never closed, never run: kept as the model wrote it
            final_blocks.append(CodeBlock(code=unclosed))
        texts = [b.text for b in final_blocks if isinstance(b, TextBlock)]
        answer = extract_answer(texts[-1]).answer if texts else None
        timings["total_s"] = time.monotonic() - started
        return Trace(
            problem=problem,
            system=preset.system,
            blocks=final_blocks,
            final_answer=answer,
            metadata=TraceMetadata(
                model=model or backend.name,
                sampling=sampling.model_dump(),
                timings=dict(timings),
                usage=usage,
                source=dict(source or {}),
                format=fmt.name,
                stop_reason=stop,
                cells=provenance,
            ),
        )

    async with contextlib.AsyncExitStack() as stack:
        session: CellRunner | None = None
        stop: StopReason
        try:
            while True:
                remaining_s = deadline - time.monotonic()
                budget = limits.max_tokens - usage.completion_tokens
                if remaining_s <= 0:
                    stop = StopReason.WALL_TIME
                    break
                if budget <= 0:
                    stop = StopReason.MAX_TOKENS
                    break
                request = CompletionRequest(
                    prompt=prompt + turn,
                    stop=fmt.stop_strings,
                    max_tokens=min(limits.step_tokens, budget),
                    sampling=sampling,
                )
                t0 = time.monotonic()
                written = ""  # this step's text so far
                completion: Completion | None = None
                try:
                    async with contextlib.aclosing(backend.stream(request)) as pieces:
                        while completion is None:
                            # The deadline bounds only the wait for the next piece, never a yield:
                            # a timeout that fired while the consumer held the event would cancel
                            # the consumer's own await instead.
                            async with asyncio.timeout_at(loop_deadline):
                                item = await anext(pieces)
                            if isinstance(item, Completion):
                                completion = item
                                continue
                            written += item
                            yield TextDelta(text=item)
                            for delta in deltas.update(turn[pending_start:] + written, len(provenance)):
                                yield delta
                except StopAsyncIteration:
                    pass  # no completion: said below
                except TimeoutError:
                    turn += written  # what the model wrote before the cut is part of its turn
                    stop = StopReason.WALL_TIME
                    break
                timings["generate_s"] += time.monotonic() - t0
                if completion is None:
                    raise BackendError(f"{backend.name}: the stream ended without a completion")
                usage.prompt_tokens += completion.prompt_tokens
                usage.completion_tokens += completion.completion_tokens
                usage.cached_prompt_tokens += completion.cached_prompt_tokens
                if completion.stop:
                    yield TextDelta(text=completion.stop)
                turn += completion.text + (completion.stop or "")
                pending = turn[pending_start:]
                cell = fmt.split_cell(pending) if completion.finish_reason == "stop" else None
                if cell is None:
                    if completion.finish_reason == "eos" or completion.stop == fmt.end_of_turn:
                        stop = StopReason.EOS
                        break
                    if extract_answer(fmt.plain_text(pending)).rule == "boxed":
                        stop = StopReason.ANSWER
                        break
                    continue
                prose, code = cell
                if prose:
                    blocks.append(TextBlock(text=prose))
                blocks.append(CodeBlock(code=code))
                index = len(provenance)
                for delta in deltas.settle(prose, code, index):
                    yield delta
                yield CodeCell(index=index, code=code)
                if index >= limits.max_rounds:
                    stop = StopReason.MAX_ROUNDS
                    pending_start = len(turn)
                    deltas.next_segment()
                    break
                if code == last_code:
                    stop = StopReason.REPEATED_CELL
                    pending_start = len(turn)
                    deltas.next_segment()
                    break
                if session is None:
                    session = await stack.enter_async_context(sessions())
                yield ExecutionStarted(index=index)
                t0 = time.monotonic()
                result = check_cell(await session.execute(code, timeout_s=limits.cell_timeout_s))
                timings["execute_s"] += time.monotonic() - t0
                output = shape_output(result, fmt, limits, backend)
                blocks.append(OutputBlock(output=output, status=result.status))
                usage.cells += 1
                provenance.append(CellProvenance.of(index, result, output))
                yield ExecutionFinished(index=index, result=result, output=output)
                turn += fmt.output_suffix(pending, output)
                pending_start = len(turn)
                deltas.next_segment()
                error = (result.error.ename, result.error.evalue) if result.error is not None else None
                if error is not None and error == last_error:
                    stop = StopReason.REPEATED_ERROR
                    break
                last_error, last_code = error, code
        except INFRASTRUCTURE_ERRORS as exc:
            for delta in deltas.settle(*last_segment(), len(provenance)):
                yield delta
            yield ErrorEvent(message=f"{type(exc).__name__}: {exc}", trace=trace("error"))
            return
        for delta in deltas.settle(*last_segment(), len(provenance)):
            yield delta
        final = trace(stop.value)
        yield FinalAnswer(answer=final.final_answer, stop_reason=stop.value, trace=final)


async def solve(problem: str, **kwargs: object) -> FinalAnswer | ErrorEvent:
    """Run a trajectory to its end and return its last event."""
    last: Event | None = None
    async for event in run_trajectory(problem, **kwargs):  # type: ignore[arg-type]
        last = event
    assert isinstance(last, FinalAnswer | ErrorEvent)
    return last
