"""The GSM8K calculator-annotation converter, with real kernels."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from benchmarks.records import Problem
from runtime.formats import get_format
from runtime.trace import CodeBlock, OutputBlock, TextBlock
from sandbox.pool import KernelPool
from sandbox.result import ExecutionStatus
from sandbox.settings import SandboxSettings
from training.generate.context import GenContext
from training.generate.gsm8k_calc import (
    SHOW_HELPER,
    Converted,
    Step,
    annotate_missing,
    build_trace,
    convert,
    convert_all,
    generate,
    generate_text,
    text_only,
)
from training.generate.records import GenerateConfig, Rejection

ASYNC = pytest.mark.asyncio(loop_scope="module")

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


@pytest.fixture(scope="module")
def train_rows(data_dir: Path) -> list[dict[str, Any]]:
    with (data_dir / "gsm8k" / "train.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(120), f, strict=False)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        yield pool


def test_natalia_converts_to_code_then_the_prose_that_states_its_result(
    train_rows: list[dict[str, Any]],
) -> None:
    assert train_rows[0]["solution"] == NATALIA["solution"]
    assert convert(NATALIA) == [
        Step("code", SHOW_HELPER + "\nclips = 48/2\nprint(show(clips))", ("24",)),
        Step("text", "Natalia sold 48/2 = 24 clips in May.", ("24",)),
        Step("code", "clips_2 = 48+clips\nprint(show(clips_2))", ("72",)),
        Step(
            "text",
            "Natalia sold 48+24 = 72 clips altogether in April and May.\nThe answer is \\boxed{72}.",
            ("72",),
        ),
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
    assert convert(row)[-1].content.endswith("\nThe answer is \\boxed{2704}.")


def test_calculations_written_without_an_annotation_get_one() -> None:
    assert annotate_missing("so 20/4 = $5 each") == (
        "so 20/4 = $<<20/4=5>>5 each",
        ["missing annotation: 20/4=5"],
    )
    assert annotate_missing("100%-40%=60% left")[0] == "100%-40% = <<100-40=60>>60% left"
    assert annotate_missing("1/2*1/2=1/4 of it") == ("1/2*1/2=1/4 of it", [])  # a fraction result: left alone
    assert annotate_missing("a <<2*3=6>>6 and 4+4=8") == ("a <<2*3=6>>6 and 4+4=8", [])
    assert text_only(NATALIA["solution"]) == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )


@ASYNC
async def test_natalia_trace_has_the_real_outputs(pool: KernelPool) -> None:
    async with pool.session() as session:
        built = await build_trace(NATALIA, session)
    assert isinstance(built, Converted), built
    trace = built.trace
    assert trace.blocks == [
        CodeBlock(code=SHOW_HELPER + "\nclips = 48/2\nprint(show(clips))"),
        OutputBlock(output="24", status=ExecutionStatus.OK),
        TextBlock(text="Natalia sold 48/2 = 24 clips in May."),
        CodeBlock(code="clips_2 = 48+clips\nprint(show(clips_2))"),
        OutputBlock(output="72", status=ExecutionStatus.OK),
        TextBlock(
            text="Natalia sold 48+24 = 72 clips altogether in April and May.\nThe answer is \\boxed{72}."
        ),
    ]
    assert trace.final_answer == "72" and trace.metadata.usage.cells == 2 and built.repairs == ()


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
        built = await build_trace(row, session)
    assert isinstance(built, Converted), built
    outputs = [b.output for b in built.trace.blocks if isinstance(b, OutputBlock)]
    assert outputs == ["42", "37", "18.5\n18.5"]


@ASYNC
async def test_a_wrong_annotated_result_is_repaired_when_the_computation_still_ends_at_the_answer(
    pool: KernelPool,
) -> None:
    row = dict(NATALIA, solution=NATALIA["solution"].replace("<<48+24=72>>72", "<<48+24=73>>73"))
    async with pool.session() as session:
        built = await build_trace(row, session)
    assert isinstance(built, Converted), built
    assert built.repairs == ("wrong result: annotation says 73, cell 1 computes 72",)
    prose = [b.text for b in built.trace.blocks if isinstance(b, TextBlock)]
    assert prose[1].startswith("Natalia sold 48+24 = 72 clips")  # the prose says what the cell printed


@ASYNC
async def test_a_wrong_annotation_that_changes_the_answer_is_rejected(pool: KernelPool) -> None:
    solution = (
        NATALIA["solution"]
        .replace("<<48/2=24>>24", "<<48/2=25>>25")
        .replace("48+24 = <<48+24=72>>72", "48+25 = <<48+25=73>>73")
    )
    row = dict(NATALIA, solution=solution.replace("#### 72", "#### 73"), answer="73")
    async with pool.session() as session:
        result = await build_trace(row, session)
    assert isinstance(result, Rejection) and result.reason == "mismatch", result
    assert "annotation says 25, cell 0 computes 24" in result.detail


@ASYNC
async def test_a_percentage_read_two_ways_is_rejected_not_repaired(pool: KernelPool) -> None:
    row = dict(NATALIA, solution="Half is 50% of 48 = <<50%*48=2400>>2400 clips.\n#### 2400", answer="2400")
    async with pool.session() as session:
        result = await build_trace(row, session)
    assert isinstance(result, Rejection) and result.reason == "mismatch", result


@ASYNC
async def test_a_wrong_final_answer_is_rejected(pool: KernelPool) -> None:
    async with pool.session() as session:
        result = await build_trace(dict(NATALIA, answer="71"), session)
    assert isinstance(result, Rejection) and result.reason == "final answer mismatch", result


@ASYNC
async def test_mode_functions_record_provenance(pool: KernelPool) -> None:
    seed = Problem(id=NATALIA["id"], question=NATALIA["question"], answer="72", dataset="gsm8k", split="train",
                   meta={"solution": NATALIA["solution"]})  # fmt: skip
    ctx = GenContext(GenerateConfig(mode="gsm8k-calc"), pool.session)
    outcome = await generate(seed, ctx)
    assert [r.id for r in outcome.records] == ["gsm8k-train-0/gsm8k-calc/0"] and outcome.candidates == 1
    assert outcome.records[0].provenance == {"dataset": "gsm8k", "split": "train", "repairs": []}
    text = await generate_text(seed, ctx)
    (record,) = text.records
    assert record.trace.code_cells == [] and record.trace.final_answer == "72"
    assert record.trace.blocks[0].text.endswith("April and May.\nThe answer is \\boxed{72}.")  # type: ignore[union-attr]


@ASYNC
async def test_first_120_train_rows(pool: KernelPool, train_rows: list[dict[str, Any]]) -> None:
    rows = train_rows
    t0 = time.monotonic()
    converted, rejections = await convert_all(rows, pool, concurrency=8)
    elapsed = time.monotonic() - t0
    yield_ = len(converted) / len(rows)
    reasons: dict[str, int] = {}
    for r in rejections:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    repaired = sum(bool(c.repairs) for c in converted)
    print(f"\ngsm8k_calc: yield {yield_:.1%} ({len(converted)}/{len(rows)}), {repaired} repaired, "
          f"{len(rows) / elapsed:.1f} examples/s, rejections {reasons}")  # fmt: skip
    for r in rejections:
        print(f"  {r.seed_id}: {r.reason}: {r.detail}")
    assert len(converted) + len(rejections) == len(rows)
    assert yield_ >= 0.95
    fmt = get_format("markdown")
    for c in converted:
        assert fmt.parse(fmt.render(c.trace).text) == c.trace.text_view()
