"""The GSM8K calculator-annotation converter, with real kernels."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from runtime.formats import get_format
from runtime.trace import CodeBlock, OutputBlock, TextBlock, Trace
from sandbox.pool import KernelPool
from sandbox.result import ExecutionStatus
from sandbox.settings import SandboxSettings
from training.gsm8k_calc import SHOW_HELPER, Rejection, Step, build_trace, convert, convert_all

ASYNC = pytest.mark.asyncio(loop_scope="module")

DATA = Path("/work/shared/data/gsm8k/train.jsonl")
SETTINGS = SandboxSettings(
    pool_size=4, max_kernels=16, cell_timeout_s=5, interrupt_grace_s=1, uid_base=65000,
    run_dir=SandboxSettings().run_dir / "test-gsm8k-calc",
)  # fmt: skip
NATALIA = {
    "id": "gsm8k-train-0",
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "answer": "72",
    "solution": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def train_rows(n: int) -> list[dict[str, Any]]:
    if not DATA.exists():
        pytest.skip(f"{DATA} is missing")
    with DATA.open() as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        yield pool


def test_natalia_converts_to_the_expected_steps() -> None:
    assert train_rows(1)[0]["solution"] == NATALIA["solution"]
    assert convert(NATALIA) == [
        Step("text", "Natalia sold 48/2 = 24 clips in May."),
        Step("code", SHOW_HELPER + "\nclips = 48/2\nprint(show(clips))", ("24",)),
        Step("text", "Natalia sold 48+24 = 72 clips altogether in April and May."),
        Step("code", "clips_2 = 48+clips\nprint(show(clips_2))", ("72",)),
        Step("text", "The answer is \\boxed{72}."),
    ]


def test_expressions_are_pythonified() -> None:
    row = {
        "id": "x",
        "question": "A shop sells 1,200 pens at $3 each and gives 25% off; 2 boxes squared.",
        "answer": "2704",
        "solution": "Price 1,200 x $3 = $<<1,200x$3=3600>>3,600.\n"
        "Off 25% of 3600 = <<25%*3600=900>>900 dollars.\n"
        "Boxes 2^2 = <<2^2=4>>4 boxes.\n"
        "Left 3600 - 900 + 4 = <<3600-900+4=2704>>2704 total.\n#### 2,704",
    }
    codes = [s.content for s in convert(row) if s.kind == "code"]
    assert codes[0].endswith("price = 1200*3\nprint(show(price))") or "= 1200*3\n" in codes[0]
    assert "= (25/100)*step_2" not in codes[1] and "(25/100)*" in codes[1]
    assert "2**2" in codes[2]
    assert convert(row)[-1] == Step("text", "The answer is \\boxed{2704}.")


@ASYNC
async def test_natalia_trace_has_the_real_outputs(pool: KernelPool) -> None:
    async with pool.session() as session:
        trace = await build_trace(NATALIA, session)
    assert isinstance(trace, Trace), trace
    assert trace.blocks == [
        TextBlock(text="Natalia sold 48/2 = 24 clips in May."),
        CodeBlock(code=SHOW_HELPER + "\nclips = 48/2\nprint(show(clips))"),
        OutputBlock(output="24", status=ExecutionStatus.OK),
        TextBlock(text="Natalia sold 48+24 = 72 clips altogether in April and May."),
        CodeBlock(code="clips_2 = 48+clips\nprint(show(clips_2))"),
        OutputBlock(output="72", status=ExecutionStatus.OK),
        TextBlock(text="The answer is \\boxed{72}."),
    ]
    assert trace.final_answer == "72" and trace.metadata.usage.cells == 2


@ASYNC
async def test_variables_are_reused_across_steps(pool: KernelPool) -> None:
    row = {
        "id": "multi",
        "question": "Tom has 7 bags with 6 apples each. He eats 5 and gives half the rest to Ann. How many are left?",
        "answer": "18.5",
        "solution": "Tom has 7*6 = <<7*6=42>>42 apples.\n"
        "After eating he has 42-5 = <<42-5=37>>37 apples.\n"
        "He gives away 37/2 = <<37/2=18.5>>18.5 apples, keeping 37-18.5 = <<37-18.5=18.5>>18.5 apples.\n"
        "#### 18.5",
    }
    codes = [s.content for s in convert(row) if s.kind == "code"]
    assert codes[1] == "apples_2 = apples-5\nprint(show(apples_2))"
    assert codes[2] == (
        "apples_3 = apples_2/2\nprint(show(apples_3))\napples_4 = apples_2-apples_3\nprint(show(apples_4))"
    )
    async with pool.session() as session:
        trace = await build_trace(row, session)
    assert isinstance(trace, Trace), trace
    outputs = [b.output for b in trace.blocks if isinstance(b, OutputBlock)]
    assert outputs == ["42", "37", "18.5\n18.5"]


@ASYNC
async def test_a_wrong_annotation_is_rejected(pool: KernelPool) -> None:
    row = dict(NATALIA, solution=NATALIA["solution"].replace("<<48+24=72>>72", "<<48+24=73>>73"))
    async with pool.session() as session:
        result = await build_trace(row, session)
    assert isinstance(result, Rejection) and result.reason == "mismatch", result


@ASYNC
async def test_a_wrong_final_answer_is_rejected(pool: KernelPool) -> None:
    async with pool.session() as session:
        result = await build_trace(dict(NATALIA, answer="71"), session)
    assert isinstance(result, Rejection) and result.reason == "final answer mismatch", result


@ASYNC
async def test_first_200_train_rows(pool: KernelPool) -> None:
    rows = train_rows(200)
    t0 = time.monotonic()
    traces, rejections = await convert_all(rows, pool, concurrency=8)
    elapsed = time.monotonic() - t0
    yield_ = len(traces) / len(rows)
    reasons: dict[str, int] = {}
    for r in rejections:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    print(f"\ngsm8k_calc: yield {yield_:.1%} ({len(traces)}/{len(rows)}), {len(rows) / elapsed:.1f} examples/s, "
          f"rejections {reasons}")  # fmt: skip
    for r in rejections:
        print(f"  {r.id}: {r.reason}: {r.detail}")
    assert len(traces) + len(rejections) == len(rows)
    assert yield_ >= 0.9
    fmt = get_format("markdown")
    for trace in traces:
        assert fmt.parse(fmt.render(trace).text) == trace.text_view()
