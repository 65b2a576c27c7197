"""The agent loop's logic and limits, with a scripted model (a replay test double): the logic tests on
the in-memory cell runner and on real kernels, the kernel-specific ones (timeouts, crashes, leases) on real
kernels only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from support.cells import MemorySessions

from benchmarks.procs import kernel_pid
from runtime.backends.scripted import ScriptedBackend, Step
from runtime.events import (
    CodeCell,
    CodeDelta,
    ErrorEvent,
    Event,
    ExecutionFinished,
    ExecutionStarted,
    FinalAnswer,
    ProseDelta,
    TextDelta,
)
from runtime.formats import get_format
from runtime.loop import CellRunner, LoopLimits, SessionFactory, StopReason, run_trajectory, solve
from runtime.prompts import get_preset
from runtime.trace import CodeBlock, OutputBlock, TextBlock
from sandbox.pool import KernelPool
from sandbox.result import ExecutionResult, ExecutionStatus
from sandbox.settings import SandboxSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETTINGS = SandboxSettings(
    pool_size=2, max_kernels=8, cell_timeout_s=5, interrupt_grace_s=1, uid_base=64000,
    run_dir=SandboxSettings().run_dir / "test-loop",
)  # fmt: skip
TIR = get_preset("tir")
CELL = "Let me compute.\n```python\n{code}\n```\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        yield pool


@pytest.fixture(params=["memory", "kernel"])
def sessions(request: pytest.FixtureRequest) -> SessionFactory:
    """The loop's logic tests run twice: on the in-memory cell runner, and on real kernels."""
    if request.param == "memory":
        return MemorySessions().session
    pool: KernelPool = request.getfixturevalue("pool")
    return pool.session


async def events_of(
    problem: str, backend: ScriptedBackend, sessions: SessionFactory, **kw: object
) -> list[Event]:
    preset = kw.pop("preset", TIR)
    return [e async for e in run_trajectory(problem, backend=backend, sessions=sessions, preset=preset, **kw)]  # type: ignore[arg-type]


async def test_a_cell_runs_and_its_output_feeds_the_next_step(sessions: SessionFactory) -> None:
    backend = ScriptedBackend(
        {"P1": [CELL.format(code="x = 6 * 7\nprint(x)"), Step("So \\boxed{42}.", eos=True)]}
    )
    events = await events_of("P1", backend, sessions)
    # Block events in order, the model's text streamed between them (a word at a time here).
    kinds = [type(e) for e in events if not isinstance(e, TextDelta | ProseDelta | CodeDelta)]
    assert kinds == [CodeCell, ExecutionStarted, ExecutionFinished, FinalAnswer]
    before_cell = events[: next(i for i, e in enumerate(events) if isinstance(e, CodeCell))]
    assert "".join(e.text for e in before_cell if isinstance(e, TextDelta)) == CELL.format(
        code="x = 6 * 7\nprint(x)"
    )
    assert "".join(e.text for e in before_cell if isinstance(e, ProseDelta)) == "Let me compute."
    assert "".join(e.text for e in before_cell if isinstance(e, CodeDelta)) == "x = 6 * 7\nprint(x)"
    final = events[-1]
    assert isinstance(final, FinalAnswer)
    assert (final.answer, final.stop_reason) == ("42", "eos")
    assert final.trace.blocks == [
        TextBlock(text="Let me compute."),
        CodeBlock(code="x = 6 * 7\nprint(x)"),
        OutputBlock(output="42", status=ExecutionStatus.OK),
        TextBlock(text="So \\boxed{42}."),
    ]
    second_prompt = backend.requests[1].prompt
    assert second_prompt.endswith("```python\nx = 6 * 7\nprint(x)\n```\n```output\n42\n```\n")
    assert backend.requests[0].stop == ("```output", "\n```\n")
    meta = final.trace.metadata
    assert meta.usage.cells == 1 and meta.stop_reason == "eos" and meta.format == "markdown"
    assert meta.cells[0].status == ExecutionStatus.OK and not meta.cells[0].truncated
    fmt = get_format("markdown")
    assert fmt.parse(fmt.render(final.trace).text) == final.trace.text_view()


async def test_a_cell_closed_by_the_output_fence_alone_runs(sessions: SessionFactory) -> None:
    """Weak models write ```output straight after the code, without the closing fence's own line."""
    backend = ScriptedBackend(
        {"P9": ["Let me compute.\n```python\nprint(6 * 7)\n```output", Step("So \\boxed{42}.", eos=True)]}
    )
    events = await events_of("P9", backend, sessions)
    final = events[-1]
    assert isinstance(final, FinalAnswer) and (final.answer, final.stop_reason) == ("42", "eos")
    assert final.trace.blocks == [
        TextBlock(text="Let me compute."),
        CodeBlock(code="print(6 * 7)"),
        OutputBlock(output="42", status=ExecutionStatus.OK),
        TextBlock(text="So \\boxed{42}."),
    ]
    # The model's own text stays as written; the runtime appends the output and the closing fence.
    assert backend.requests[1].prompt.endswith("```python\nprint(6 * 7)\n```output\n42\n```\n")
    assert "".join(e.text for e in events if isinstance(e, CodeDelta)) == "print(6 * 7)"


async def test_mathcoder_format_runs_cells_between_its_tokens(sessions: SessionFactory) -> None:
    backend = ScriptedBackend(
        {
            "P2": [  # one block per step, as MathCoder's own inference loop generates
                "<|text|>Compute.<|endofblock|>",
                "<|code|>print(2**10)<|endofblock|>",
                "<|text|>So 2^10 is \\boxed{1024}.<|endofblock|>",
                "<|endofmessage|>",
            ]
        }
    )
    final = (await events_of("P2", backend, sessions, preset=get_preset("mathcoder")))[-1]
    assert isinstance(final, FinalAnswer) and final.answer == "1024"
    assert backend.requests[2].prompt.endswith(
        "<|code|>print(2**10)<|endofblock|><|execution|>1024<|endofblock|>"
    )
    assert [b.kind for b in final.trace.blocks] == ["text", "code", "output", "text"]
    assert final.stop_reason == StopReason.ANSWER


async def test_a_timed_out_cell_is_reported_and_the_loop_goes_on(pool: KernelPool) -> None:
    backend = ScriptedBackend(
        {
            "P3": [
                CELL.format(code="y = 1\nwhile True:\n    pass"),
                CELL.format(code="print(y)"),
                Step("\\boxed{1}", eos=True),
            ]
        }
    )
    events = await events_of("P3", backend, pool.session, limits=LoopLimits(cell_timeout_s=1))
    results = [e for e in events if isinstance(e, ExecutionFinished)]
    assert [r.result.status for r in results] == [ExecutionStatus.TIMEOUT, ExecutionStatus.OK]
    assert "ran past the 1 s limit" in results[0].output
    assert results[1].output == "1"  # the interrupted kernel kept its state


async def test_a_crashed_kernel_mid_trajectory_is_replaced(pool: KernelPool) -> None:
    backend = ScriptedBackend(
        {
            "P4": [
                CELL.format(code="import os\nos._exit(3)"),
                CELL.format(code="print('fresh')"),
                Step("done", eos=True),
            ]
        }
    )
    events = await events_of("P4", backend, pool.session)
    results = [e for e in events if isinstance(e, ExecutionFinished)]
    assert results[0].result.status == ExecutionStatus.CRASHED and results[0].result.kernel_restarted
    assert "exited with status 3" in results[0].output
    assert (results[1].result.status, results[1].output) == (ExecutionStatus.OK, "fresh")
    final = events[-1]
    assert isinstance(final, FinalAnswer) and final.trace.metadata.cells[0].kernel_restarted


async def test_a_kernel_killed_from_outside_ends_the_trajectory_as_an_infrastructure_failure(
    pool: KernelPool,
) -> None:
    """The model did nothing wrong: the trajectory ends on an ErrorEvent (retried by the harness,
    never graded), not on a CRASHED output the model would read and answer from."""

    @contextlib.asynccontextmanager
    async def killed_mid_cell() -> AsyncIterator[CellRunner]:
        async with pool.session() as session:

            class Runner:
                async def execute(self, code: str, timeout_s: float | None = None) -> ExecutionResult:
                    uid = SETTINGS.uid_base + session.kernel.slot

                    def kill(*_: object) -> None:  # once the cell runs: from outside, as an operator would
                        with contextlib.suppress(LookupError, ProcessLookupError):
                            os.kill(kernel_pid(uid), signal.SIGKILL)

                    return await session.execute(code, timeout_s, on_stream=kill)

            yield Runner()

    backend = ScriptedBackend(
        {"P4b": [CELL.format(code="import time\nprint('running', flush=True)\ntime.sleep(30)"), "unused"]}
    )
    events = await events_of("P4b", backend, killed_mid_cell)
    last = events[-1]
    assert isinstance(last, ErrorEvent) and "KernelLost" in last.message and "from outside" in last.message
    assert not any(isinstance(e, ExecutionFinished) for e in events)  # the model is never shown it
    assert len(backend.requests) == 1


async def test_a_code_block_that_never_closes_ends_at_the_token_budget(sessions: SessionFactory) -> None:
    backend = ScriptedBackend({"P5": ["```python\nwhile True:"] + ["x = x + 1"] * 20})
    events = await events_of("P5", backend, sessions, limits=LoopLimits(max_tokens=12, step_tokens=4))
    final = events[-1]
    assert isinstance(final, FinalAnswer) and final.stop_reason == StopReason.MAX_TOKENS
    assert not any(isinstance(e, ExecutionStarted) for e in events)
    assert final.trace.metadata.usage.completion_tokens == 12


async def test_repetition_and_round_limits_stop_the_loop(sessions: SessionFactory) -> None:
    same = CELL.format(code="print(1)")
    failing = CELL.format(code="undefined_name")
    backend = ScriptedBackend(
        {"R1": [same, same, "unused"], "R2": [failing, CELL.format(code="undefined_name ")], "R3": [same] * 5}
    )
    r1 = await solve("R1", backend=backend, sessions=sessions, preset=TIR)
    r2 = await solve("R2", backend=backend, sessions=sessions, preset=TIR)
    r3 = await solve("R3", backend=backend, sessions=sessions, preset=TIR, limits=LoopLimits(max_rounds=0))
    assert isinstance(r1, FinalAnswer) and r1.stop_reason == StopReason.REPEATED_CELL
    assert r1.trace.metadata.usage.cells == 1
    assert isinstance(r2, FinalAnswer) and r2.stop_reason == StopReason.REPEATED_ERROR
    assert (
        isinstance(r3, FinalAnswer)
        and r3.stop_reason == StopReason.MAX_ROUNDS
        and r3.trace.metadata.usage.cells == 0
    )


async def test_wall_time_budget_stops_a_slow_model(sessions: SessionFactory) -> None:
    backend = ScriptedBackend({"W": [Step("thinking", delay_s=30)]})
    final = await solve(
        "W", backend=backend, sessions=sessions, preset=TIR, limits=LoopLimits(wall_time_s=0.2)
    )
    assert isinstance(final, FinalAnswer) and final.stop_reason == StopReason.WALL_TIME


async def test_output_is_cut_in_model_tokens_and_delimiters_are_defused(sessions: SessionFactory) -> None:
    backend = ScriptedBackend(
        {
            "T": [
                CELL.format(code="print(' '.join(str(i) for i in range(200)))"),
                CELL.format(code="print('`' * 3)"),
                Step("end", eos=True),
            ]
        }
    )
    events = await events_of("T", backend, sessions, limits=LoopLimits(output_tokens=20))
    first, second = [e for e in events if isinstance(e, ExecutionFinished)]
    assert backend.count_tokens(first.output) <= 20 and "characters truncated" in first.output
    assert "```" not in second.output and second.output == "`\u200b``"
    final = events[-1]
    assert isinstance(final, FinalAnswer) and final.trace.metadata.cells[0].truncated
    fmt = get_format("markdown")
    assert fmt.parse(fmt.render(final.trace).text) == final.trace.text_view()


async def test_a_backend_failure_is_an_error_event_with_the_partial_trace(sessions: SessionFactory) -> None:
    backend = ScriptedBackend({"E": [CELL.format(code="print(5)")]})  # no step 1: the backend fails
    last = await solve("E", backend=backend, sessions=sessions, preset=TIR)
    assert isinstance(last, ErrorEvent) and "has no step 1" in last.message
    assert last.trace is not None and last.trace.metadata.usage.cells == 1


async def test_cancelling_one_trajectory_leaves_the_others_running(pool: KernelPool) -> None:
    scripts = {
        f"C{i}": [CELL.format(code="import time\ntime.sleep(0.5)\nprint('ok')"), Step("\\boxed{1}", eos=True)]
        for i in range(3)
    }
    scripts["C-slow"] = [CELL.format(code="import time\ntime.sleep(60)")]
    backend = ScriptedBackend(scripts)
    started = asyncio.Event()

    async def slow() -> None:
        async for event in run_trajectory("C-slow", backend=backend, sessions=pool.session, preset=TIR):
            if isinstance(event, ExecutionStarted):
                started.set()

    victim = asyncio.create_task(slow())
    others = [
        asyncio.create_task(solve(f"C{i}", backend=backend, sessions=pool.session, preset=TIR))
        for i in range(3)
    ]
    await started.wait()
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    finals = await asyncio.gather(*others)
    assert all(isinstance(f, FinalAnswer) and f.answer == "1" for f in finals)
    await pool.drain()
    stats = await pool.wait_until(lambda st: st.leased == 0)
    assert stats.leased == 0


async def test_no_kernel_is_leased_for_a_trajectory_without_code(pool: KernelPool) -> None:
    backend = ScriptedBackend({"N": [Step("It is \\boxed{3}.", eos=True)]})
    started_before = pool.stats().started
    final = await solve("N", backend=backend, sessions=pool.session, preset=TIR)
    assert isinstance(final, FinalAnswer) and final.answer == "3"
    assert pool.stats().started == started_before
