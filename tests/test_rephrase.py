"""The rephrase mode (MetaMath-style), with real sandboxed kernels and a scripted teacher; the
real default model runs it once in a slow test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio

from benchmarks.records import Problem
from runtime.backends.base import Backend
from runtime.backends.scripted import ScriptedBackend, Step
from runtime.grading import is_equivalent
from runtime.trace import CodeBlock, OutputBlock
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings
from training.generate.context import GenContext
from training.generate.records import GenerateConfig, SeedOutcome
from training.generate.rephrase import check_rephrase, clean_question, generate, numbers, solves

Script = dict[str, Sequence[Step | str]]
ASYNC = pytest.mark.asyncio(loop_scope="module")
SETTINGS = SandboxSettings(
    pool_size=2, max_kernels=8, cell_timeout_s=10, uid_base=67000,
    run_dir=SandboxSettings().run_dir / "test-augment",
)  # fmt: skip

SEED = Problem(
    id="gsm8k-train-0",
    question="Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    answer="72",
    dataset="gsm8k",
    split="train",
)
REPHRASED = (
    "In April Natalia sold clips to 48 friends. In May she sold only half as many clips as in April. "
    "What is the total number of clips she sold over the two months?"
)
SOLVE: list[Step | str] = [
    "In May she sold half of 48.\n```python\nmay = 48 // 2\nprint(48 + may)\n```\n",
    Step("She sold 72 clips in all.\nThe answer is \\boxed{72}.", eos=True),
]


def ctx_for(pool: KernelPool, script: Script, **config: Any) -> GenContext:
    settings: dict[str, Any] = {"mode": "rephrase", "backend": "scripted", "concurrency": 1, **config}
    return GenContext(
        config=GenerateConfig(**settings), sessions=pool.session, backend=ScriptedBackend(script)
    )


def essentials(outcome: SeedOutcome) -> dict[str, Any]:
    """An outcome without what differs between runs (timings)."""
    return {
        "records": [(r.id, r.question, r.answer, r.provenance, r.trace.text_view()) for r in outcome.records],
        "rejections": outcome.rejections,
        "candidates": outcome.candidates,
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        yield pool


# ------------------------------------------------------------------------------------- checking


def test_clean_question_strips_lead_in_quotes_and_solution() -> None:
    assert clean_question(f'Here is the rewritten problem:\n"{REPHRASED}"\n\nAnswer: 72') == REPHRASED
    assert clean_question(f"**Rephrased question:** {REPHRASED}") == REPHRASED
    assert clean_question(f"Sure! Here's a rephrasing:\n\n{REPHRASED}\nSolution: 48 / 2 = 24") == REPHRASED
    # A colon inside the question is not a lead-in.
    assert clean_question("Tom has 5 apples. What is the ratio: apples to pears?") == (
        "Tom has 5 apples. What is the ratio: apples to pears?"
    )


def test_numbers_read_groups_decimals_and_words() -> None:
    assert numbers("She paid $1,200.50 for 3/4 of 48 boxes. Then 2.5% and 10.") == {
        1200.5, 3, 4, 48, 2.5, 10
    }  # fmt: skip
    assert numbers("five dozen and 7", words=True) == {5, 12, 7}
    assert numbers("five dozen and 7") == {7}


def test_check_rephrase_reasons() -> None:
    original = SEED.question
    assert check_rephrase(original, REPHRASED) is None
    assert check_rephrase(original, "") == ("empty", "")
    assert check_rephrase(original, "  " + original.upper().replace(" ", "   ") + "\n") == ("unchanged", "")
    assert check_rephrase(original, REPHRASED, {" ".join(REPHRASED.split()).casefold()}) == (
        "duplicate rephrase", ""
    )  # fmt: skip
    reason, detail = check_rephrase(original, REPHRASED.replace("48", "some"))  # type: ignore[misc]
    assert reason == "number dropped" and "missing 48" in detail
    reason, detail = check_rephrase(original, REPHRASED.replace("April.", "April, 3 days."))  # type: ignore[misc]
    assert reason == "number added" and "new 3" in detail
    assert check_rephrase("Tom has 5 apples and eats 2. How many are left?", "Tom owns five apples; he eats 2 "
                          "of them. How many apples remain?") is None  # fmt: skip
    assert check_rephrase(original, REPHRASED + " Let x be the answer." * 40)[0] == "too long"  # type: ignore[index]
    assert check_rephrase(original, "48 clips?")[0] == "too short"  # type: ignore[index]
    assert check_rephrase(original, REPHRASED + " \\boxed{72}")[0] == "contains a solution"  # type: ignore[index]
    # What the 135M teacher really wrote for a GSM8K question (its only number, 50, is the original's).
    weng = "Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes of babysitting. How much did she earn?"
    solved = "The answer to the problem is 50.\n\nRewrite the math problem:\n\nWeng earned $12 an hour for babysitting."
    assert check_rephrase(weng, solved)[0] == "contains a solution"  # type: ignore[index]
    assert not solves("A 20% salt solution is mixed with 5 liters of water. What is the new concentration?")


# ------------------------------------------------------------------------------------ generation


@ASYNC
async def test_a_good_rephrase_is_kept_with_its_correct_trace(pool: KernelPool) -> None:
    ctx = ctx_for(
        pool, {SEED.question: [Step(f"Rewritten problem: {REPHRASED}", eos=True)], REPHRASED: SOLVE}
    )
    outcome = await generate(SEED, ctx)
    assert outcome.rejections == [] and outcome.candidates == 1
    [record] = outcome.records
    assert (record.id, record.seed_id, record.mode) == ("gsm8k-train-0/rephrase/0/0", SEED.id, "rephrase")
    assert (record.question, record.answer, record.trace.problem) == (REPHRASED, "72", REPHRASED)
    assert record.trace.final_answer == "72"
    cell, output = record.trace.blocks[1:3]
    assert isinstance(cell, CodeBlock) and "48 // 2" in cell.code
    assert isinstance(output, OutputBlock) and output.output == "72"  # really ran in a kernel
    assert record.provenance == {
        "original_question": SEED.question, "teacher": "scripted", "temperature": 0.0, "variant": 0,
        "sample": 0, "dataset": "gsm8k", "split": "train", "run_seed": 0,
    }  # fmt: skip
    assert record.trace.metadata.source["id"] == "gsm8k-train-0/rephrase/0"


@ASYNC
async def test_a_rephrase_that_drops_a_number_is_rejected_before_solving(pool: KernelPool) -> None:
    dropped = REPHRASED.replace("48", "many")
    ctx = ctx_for(pool, {SEED.question: [Step(dropped, eos=True)], dropped: SOLVE})
    outcome = await generate(SEED, ctx)
    assert outcome.records == [] and outcome.candidates == 1
    [rejection] = outcome.rejections
    assert (rejection.seed_id, rejection.mode, rejection.reason) == (SEED.id, "rephrase", "number dropped")
    assert "missing 48" in rejection.detail
    assert isinstance(ctx.backend, ScriptedBackend) and ctx.backend.calls[dropped] == 0  # no trajectory spent


@ASYNC
async def test_a_wrong_answer_trajectory_is_rejected(pool: KernelPool) -> None:
    wrong: list[Step | str] = [Step("Half of 48 is 24, plus 48 is 73.\nThe answer is \\boxed{73}.", eos=True)]
    ctx = ctx_for(pool, {SEED.question: [Step(REPHRASED, eos=True)], REPHRASED: wrong})
    outcome = await generate(SEED, ctx)
    assert outcome.records == [] and outcome.candidates == 1
    [rejection] = outcome.rejections
    assert rejection.reason == "wrong answer" and "'73'" in rejection.detail and "'72'" in rejection.detail


def _variants_script() -> Script:
    other = REPHRASED.replace("What is the total number", "How many")
    answer = "The answer is \\boxed{72}."
    return {
        SEED.question: [Step(REPHRASED, eos=True), Step(other, eos=True), Step(REPHRASED, eos=True)],
        REPHRASED: [
            Step(f"48 + 24 = 72.\n{answer}", eos=True),
            Step(f"48 + 48 / 2 = 72.\n{answer}", eos=True),
        ],
        other: [Step(f"48 + 24 = 72.\n{answer}", eos=True), Step("Hmm.\n\\boxed{24}", eos=True)],
    }


@ASYNC
async def test_variants_dedupe_and_determinism(pool: KernelPool) -> None:
    config = {"variants": 3, "samples": 2, "temperature": 0.7, "seed": 5}
    ctx = ctx_for(pool, _variants_script(), **config)
    first = await generate(SEED, ctx)
    assert [r.id for r in first.records] == ["gsm8k-train-0/rephrase/0/0", "gsm8k-train-0/rephrase/0/1"]
    assert [(r.reason, r.detail) for r in first.rejections] == [
        ("duplicate trace", "gsm8k-train-0/rephrase/1#0"),  # same prose as variant 0's first trace
        ("wrong answer", "gsm8k-train-0/rephrase/1#1: '24' vs reference '72'"),
        ("duplicate rephrase", ""),
    ]
    assert first.candidates == 5 and first.records[0].provenance["run_seed"] == 5
    # The teacher's calls are seeded by (seed id, mode, variant); trajectories by the variant's id.
    backend = ctx.backend
    assert isinstance(backend, ScriptedBackend)
    teacher_seeds = [r.sampling.seed for r in backend.requests if SEED.question in r.prompt]
    assert teacher_seeds == [ctx.sampling_seed(SEED.id, "rephrase", n) for n in range(3)]
    assert len(set(teacher_seeds)) == 3
    trajectory_seeds = [r.sampling.seed for r in backend.requests if REPHRASED in r.prompt]
    base = ctx.sampling_seed("trajectory", "gsm8k-train-0/rephrase/0")
    assert trajectory_seeds == [base, base + 1]

    again = await generate(SEED, ctx_for(pool, _variants_script(), **config))
    assert essentials(again) == essentials(first)
    other_run = ctx_for(pool, _variants_script(), **{**config, "seed": 6})
    await generate(SEED, other_run)
    assert isinstance(other_run.backend, ScriptedBackend)
    assert other_run.backend.requests[0].sampling.seed != teacher_seeds[0]


@ASYNC
async def test_keep_per_seed_stops_asking_for_variants(pool: KernelPool) -> None:
    ctx = ctx_for(pool, _variants_script(), variants=3, samples=2, keep_per_seed=1)
    outcome = await generate(SEED, ctx)
    assert [r.id for r in outcome.records] == ["gsm8k-train-0/rephrase/0/0"]
    assert [r.reason for r in outcome.rejections] == ["keep_per_seed reached"]
    assert isinstance(ctx.backend, ScriptedBackend) and ctx.backend.calls[SEED.question] == 1


# ------------------------------------------------------------------------------- the real model


@pytest.mark.slow
@pytest.mark.timeout(900)  # a 135M model on a shared CPU writes a few tokens a second
@ASYNC
async def test_the_default_model_rephrases_real_seeds(
    pool: KernelPool, teacher: Backend, gsm8k_seeds: list[Problem]
) -> None:
    config = GenerateConfig(
        mode="rephrase", backend="transformers", variants=2, samples=1, max_tokens=96, max_rounds=2,
        temperature=0.7, concurrency=2,
    )  # fmt: skip
    ctx = GenContext(config=config, sessions=pool.session, backend=teacher, limiter=asyncio.Semaphore(2))
    outcomes = [await generate(seed, ctx) for seed in gsm8k_seeds]
    for outcome in outcomes:
        print(f"\n{outcome.id}: {len(outcome.records)} kept, {outcome.candidates} candidates, "
              f"{outcome.wall_time_s:.1f} s")  # fmt: skip
        for rejection in outcome.rejections:
            print(f"  rejected: {rejection.reason}: {rejection.detail[:200]}")
        for record in outcome.records:
            print(f"  kept {record.id}: {record.question!r} -> {record.trace.final_answer}")
        # Each variant is a candidate at least once (a rejected rewrite, or its sample), unless one
        # was kept and filled the seed; a kept trace answers the seed's own question.
        assert len(outcome.records) + len(outcome.rejections) >= (1 if outcome.records else config.variants)
        assert all(r.reason for r in outcome.rejections)
        # A kept trace's own final answer grades equal to the seed's (its ``answer`` field is copied
        # from the seed, so it says nothing).
        for r in outcome.records:
            assert r.trace.final_answer is not None and is_equivalent(r.trace.final_answer, "72"), r.id
