"""The backward (FOBAR / self-verification) generation mode, with real sandboxed kernels."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from typing import Any

import pytest
import pytest_asyncio

from benchmarks.records import Problem
from runtime.backends.base import Backend
from runtime.backends.scripted import ScriptedBackend
from runtime.formats import get_format
from runtime.loop import CellRunner
from runtime.trace import CodeBlock, OutputBlock, TextBlock
from sandbox.pool import KernelPool, Session
from sandbox.result import ExecutionStatus
from sandbox.settings import SandboxSettings
from training.generate.backward import (
    FOBAR_SUFFIX,
    SV_SUFFIX,
    backward_steps,
    check_statement,
    choose_masks,
    generate,
    mask_question,
)
from training.generate.context import GenContext, TeacherRequired
from training.generate.forward import BackwardRejected, implied_values, question_numbers, read_forward
from training.generate.records import GenerateConfig, GenRecord, SeedOutcome

ASYNC = pytest.mark.asyncio(loop_scope="module")

SETTINGS = SandboxSettings(
    pool_size=2, max_kernels=8, cell_timeout_s=10, uid_base=66000,
    run_dir=SandboxSettings().run_dir / "test-backward",
)  # fmt: skip
NATALIA_MASKED = (
    "Natalia sold clips to x of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
# The masked 4 cancels out (she gets back what she lent): x = 4 is a solution but not the only one.
CANCELLING = {
    "id": "cancelling",
    "question": "Ann has 10 pens. She lends 4 to Bob and Bob returns them all. How many pens does Ann have?",
    "answer": "10",
    "solution": "Ann has 10-4 = <<10-4=6>>6 pens after lending.\n"
    "She has 6+4 = <<6+4=10>>10 pens after Bob returns them.\n#### 10",
}
YIELD_FLOOR = 0.85  # measured 88/100 on the first 100 train rows


def seed_of(row: dict[str, Any]) -> Problem:
    return Problem(
        id=row["id"], question=row["question"], answer=row["answer"], dataset="gsm8k", split="train",
        meta={"solution": row["solution"]},
    )  # fmt: skip


def context(
    sessions: Callable[[], contextlib.AbstractAsyncContextManager[CellRunner]],
    *,
    seed: int = 0,
    teacher: Backend | None = None,
    **config: Any,
) -> GenContext:
    return GenContext(
        config=GenerateConfig(mode="backward", seed=seed, **config), sessions=sessions, backend=teacher
    )


def stable(record: GenRecord) -> dict[str, Any]:
    """A record without its timings (the only part that differs between identical runs)."""
    data = record.model_dump(mode="json")
    data["trace"]["metadata"].pop("timings")
    for cell in data["trace"]["metadata"]["cells"]:
        cell.pop("wall_time_s")
    return data


def outputs(record: GenRecord) -> list[str]:
    return [b.output for b in record.trace.blocks if isinstance(b, OutputBlock)]


@pytest.fixture(scope="module")
def train(load_rows: Callable[[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return load_rows("gsm8k", "train")[:100]


@pytest.fixture(scope="module")
def natalia(train: list[dict[str, Any]]) -> Problem:
    return seed_of(train[0])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        yield pool


# -- pure parts ---------------------------------------------------------------------------------------


def test_numbers_are_found_and_masked_as_written() -> None:
    question = "Josh buys a house for $80,000, puts in 3.5 weeks and 25% more, two-thirds of five boxes, 3rd."
    mentions = question_numbers(question)
    assert [m.text for m in mentions] == ["80,000", "3.5", "25", "five"]
    assert [m.percent for m in mentions] == [False, False, True, False]
    assert mask_question(question, mentions[0]).startswith("Josh buys a house for $x, puts")
    assert "x% more" in mask_question(question, mentions[2])
    assert "of x boxes" in mask_question(question, mentions[3])
    assert question_numbers("over three hundred years, 2 million people") == []
    assert implied_values("twice as many; 30 minutes an hour; a two-inch fish") >= {2, 60}


def test_natalia_steps_rebuild_the_computation_with_x(natalia: Problem) -> None:
    forward, chosen = choose_masks(natalia, context(_no_sessions))
    assert [m.text for m in chosen] == ["48"]
    codes = [s.content for s in backward_steps(forward, chosen[0]) if s.kind == "code"]
    assert codes == [
        "from sympy import Eq, solve, symbols\nx = symbols('x', positive=True)\nclips = x / 2\nprint(clips)",
        "clips_2 = x + clips\nprint(clips_2)",
        "solution = solve(Eq(clips_2, 72), x)\nprint(solution)",
    ]


def test_decimals_become_rationals(train: list[dict[str, Any]]) -> None:
    # "$1.20", "$0.5", "$2.7": every decimal literal is exact in the symbolic cells.
    seed = seed_of(train[37])
    forward, chosen = choose_masks(seed, context(_no_sessions))
    code = "\n".join(s.content for s in backward_steps(forward, chosen[0]) if s.kind == "code")
    for decimal in ("1.2", "0.5", "2.7"):
        assert Fraction(decimal) == chosen[0].value or f"Rational('{decimal}')" in code
    assert not re.search(r"(?<!')\b\d+\.\d+\b(?!')", code), code


def test_unusable_seeds_are_explained(natalia: Problem) -> None:
    no_solution = natalia.model_copy(update={"meta": {}})
    with pytest.raises(BackwardRejected, match="keep_solution"):
        read_forward(no_solution)
    unannotated = natalia.model_copy(update={"meta": {"solution": "She sold 72 clips."}})
    with pytest.raises(BackwardRejected) as info:
        read_forward(unannotated)
    assert info.value.reason == "unconvertible"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty statement"),
        (NATALIA_MASKED, "copied the question"),
        ("Natalia sold clips to x of her friends in April; did she sell 72 clips in all?", "not a statement"),
        ("Natalia sold clips to some friends in April and half as many in May, 72 clips in all.", "missing x"),
        ("Natalia sold clips to x of her 48 friends in April and half as many in May, 72 in all.",
         "leaked masked number"),
        ("Natalia sold clips to x of her friends in April and half as many in May.", "missing answer"),
    ],
)  # fmt: skip
def test_bad_statements_are_rejected(natalia: Problem, reply: str, reason: str) -> None:
    forward, chosen = choose_masks(natalia, context(_no_sessions))
    with pytest.raises(BackwardRejected) as info:
        check_statement(reply, masked_question=NATALIA_MASKED, original_question=natalia.question,
                        mention=chosen[0], answer=forward.answer)  # fmt: skip
    assert info.value.reason == reason


def test_a_dropped_number_is_rejected(train: list[dict[str, Any]]) -> None:
    seed = seed_of(train[1])  # Weng earns $12 an hour ... 50 minutes ...
    forward, chosen = choose_masks(seed, context(_no_sessions))
    mention = next(m for m in chosen if m.text == "12")
    masked = mask_question(seed.question, mention)
    good = (
        "Weng earns $x an hour for babysitting, and for 50 minutes of babysitting yesterday she earned $10."
    )
    kwargs: dict[str, Any] = {"masked_question": masked, "original_question": seed.question, "mention": mention,
                              "answer": forward.answer}  # fmt: skip
    assert check_statement(f"Statement: {good}\n\nThat is all.", **kwargs) == good
    with pytest.raises(BackwardRejected, match="dropped a number"):
        check_statement("Weng earns $x an hour for babysitting, and yesterday she earned $10.", **kwargs)


async def test_sv_without_a_teacher_fails_before_any_work(natalia: Problem) -> None:
    with pytest.raises(TeacherRequired, match="--backend"):
        await generate(natalia, context(_no_sessions, options={"self_verification": True}))


@contextlib.asynccontextmanager
async def _no_sessions() -> AsyncIterator[CellRunner]:
    raise AssertionError("this test must not need a sandbox session")
    yield  # pragma: no cover


# -- with real kernels ---------------------------------------------------------------------------------


@ASYNC
async def test_natalia_fobar_trace_runs_and_proves_x(pool: KernelPool, natalia: Problem) -> None:
    outcome = await generate(natalia, context(pool.session))
    assert outcome.rejections == [] and outcome.candidates == 1
    (record,) = outcome.records
    assert record.id == "gsm8k-train-0/fobar/0" and record.mode == "backward" and record.answer == "48"
    assert record.question == f"{NATALIA_MASKED}\n{FOBAR_SUFFIX.format(answer=72)}"
    assert record.provenance == {
        "kind": "fobar", "masked": "48", "original_answer": "72", "original_question": natalia.question,
        "dataset": "gsm8k", "split": "train", "run_seed": 0,
    }  # fmt: skip
    blocks = record.trace.blocks
    assert [type(b) for b in blocks] == [TextBlock, CodeBlock, OutputBlock] * 3 + [TextBlock]
    assert all(b.status == ExecutionStatus.OK for b in blocks if isinstance(b, OutputBlock))
    assert outputs(record) == ["x/2", "3*x/2", "[48]"]  # what the kernel printed: x = 48 exactly
    assert isinstance(blocks[-1], TextBlock) and blocks[-1].text.endswith("The answer is \\boxed{48}.")
    meta = record.trace.metadata
    assert meta.format == "markdown" and meta.source["id"] == natalia.id and meta.usage.cells == 3
    assert record.trace.final_answer == "48" and record.trace.problem == record.question
    fmt = get_format("markdown")
    rendered = fmt.render(record.trace)
    assert "```output\n[48]\n```" in rendered.text
    assert fmt.parse(rendered.text) == record.trace.text_view()


@ASYNC
async def test_the_same_seed_gives_the_same_records(pool: KernelPool, train: list[dict[str, Any]]) -> None:
    seed = seed_of(train[2])  # Betty's wallet: $100, $15 and the answer 5 — several numbers to mask
    first = {run: choose_masks(seed, context(_no_sessions, seed=run))[1][0].text for run in range(8)}
    assert len(set(first.values())) > 1, first
    a, b = 0, next(run for run in first if first[run] != first[0])
    one = await generate(seed, context(pool.session, seed=a))
    again = await generate(seed, context(pool.session, seed=a))
    other = await generate(seed, context(pool.session, seed=b))
    assert [stable(r) for r in one.records] == [stable(r) for r in again.records]
    assert len(one.records) == len(other.records) == 1
    assert one.records[0].provenance["masked"] == first[a]
    assert other.records[0].provenance["masked"] == first[b] != first[a]
    assert other.records[0].provenance["run_seed"] == b


@ASYNC
async def test_variants_mask_distinct_numbers(pool: KernelPool, train: list[dict[str, Any]]) -> None:
    outcome = await generate(seed_of(train[2]), context(pool.session, variants=2))
    assert [r.id for r in outcome.records] == ["gsm8k-train-2/fobar/0", "gsm8k-train-2/fobar/1"]
    assert len({r.provenance["masked"] for r in outcome.records}) == 2


@ASYNC
async def test_rejections_say_why(pool: KernelPool, natalia: Problem) -> None:
    def reasons(outcome: SeedOutcome) -> list[str]:
        assert outcome.records == [] and outcome.candidates == len(outcome.rejections) >= 1
        assert all(r.mode == "backward" and r.seed_id == outcome.id for r in outcome.rejections)
        return [r.reason for r in outcome.rejections]

    # Numbers that the computation never uses (the solution counts from its own numbers).
    unused = natalia.model_copy(
        update={"id": "unused", "question": "Tom has 5 apples and buys 3 more. How many does he have?",
                "answer": "8", "meta": {"solution": "Tom has 4+4 = <<4+4=8>>8 apples.\n#### 8"}}
    )  # fmt: skip
    outcome = await generate(unused, context(_no_sessions))
    assert reasons(outcome) == ["fobar: no maskable number"]
    assert "5: the answer's computation does not use it" in outcome.rejections[0].detail
    broken = natalia.model_copy(update={"meta": {"solution": "Natalia sold 48/2 = <<48/2=24>>24 clips."}})
    outcome = await generate(broken, context(_no_sessions))
    assert reasons(outcome) == ["fobar: unconvertible"]
    assert "####" in outcome.rejections[0].detail
    # Caught only by running the cells: the masked number cancels out, so solve finds no unique x.
    outcome = await generate(seed_of(CANCELLING), context(pool.session))
    assert reasons(outcome) == ["fobar: no unique solution"]
    assert outcome.rejections[0].detail == "x = 4: solve printed '[]'"


class SharedSessions:
    """Lends a few long-lived sessions in turn.

    Each seed's symbolic cells define every name they use, so a kernel reused across seeds gives the
    same outputs as a fresh one; reusing it saves the kernel start and the sympy import (~1 s a seed on
    two busy cores), which keeps the 100-seed measurement under a minute.
    """

    def __init__(self, sessions: list[Session]) -> None:
        self.free: asyncio.Queue[Session] = asyncio.Queue()
        for session in sessions:
            self.free.put_nowait(session)

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[CellRunner]:
        session = await self.free.get()
        try:
            yield session
        finally:
            self.free.put_nowait(session)


@ASYNC
async def test_fobar_yield_on_the_first_100_train_rows(pool: KernelPool, train: list[dict[str, Any]]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        sessions = SharedSessions([await stack.enter_async_context(pool.session()) for _ in range(2)])
        ctx = context(sessions)
        t0 = time.monotonic()
        outcomes = await asyncio.gather(*(generate(seed_of(row), ctx) for row in train))
        elapsed = time.monotonic() - t0
    kept = [r for o in outcomes for r in o.records]
    yield_ = sum(1 for o in outcomes if o.records) / len(train)
    reasons: dict[str, int] = {}
    for o in outcomes:
        for r in o.rejections:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    print(f"\nbackward fobar: yield {yield_:.0%} ({len(kept)}/{len(train)} seeds), {elapsed:.1f} s, "
          f"rejections {reasons}")  # fmt: skip
    for o in outcomes:
        for r in o.rejections:
            print(f"  {r.seed_id}: {r.reason}: {r.detail[:160]}")
    assert yield_ >= YIELD_FLOOR
    fmt = get_format("markdown")
    for record in kept:
        assert Fraction(outputs(record)[-1].strip("[]")) == Fraction(record.answer)  # the kernel's solution
        masked_question = record.question.split("\n")[0]
        assert Fraction(record.answer) not in {m.value for m in question_numbers(masked_question)}
        assert fmt.parse(fmt.render(record.trace).text) == record.trace.text_view()


# -- self-verification -------------------------------------------------------------------------------

SV_GOOD = (
    "Natalia sold clips to x of her friends in April and half as many clips in May, 72 clips altogether."
)
SV_NO_X = "Natalia sold clips to her friends in April and half as many in May, 72 clips altogether."


@ASYNC
async def test_sv_with_a_scripted_teacher(pool: KernelPool, natalia: Problem) -> None:
    teacher = ScriptedBackend({NATALIA_MASKED: [SV_GOOD, SV_NO_X]})
    ctx = context(pool.session, teacher=teacher, backend="scripted", model="scripted-teacher",
                  options={"self_verification": True})  # fmt: skip
    good = await generate(natalia, ctx)
    assert [r.id for r in good.records] == ["gsm8k-train-0/fobar/0", "gsm8k-train-0/sv/0"]
    fobar, sv = good.records
    assert sv.question == f"{SV_GOOD} {SV_SUFFIX}" and sv.answer == "48"
    assert sv.trace.blocks == fobar.trace.blocks and sv.trace.problem == sv.question
    assert sv.provenance["kind"] == "sv" and sv.provenance["masked"] == "48"
    assert sv.provenance["teacher"] == {
        "backend": "scripted",
        "model": "scripted-teacher",
        "temperature": 0.0,
    }
    # The teacher saw the masked question and the answer, never the masked number.
    (request,) = teacher.requests
    assert f"Problem: {NATALIA_MASKED}\nAnswer: 72" in request.prompt and "48" not in request.prompt
    bad = await generate(natalia, ctx)
    assert [r.id for r in bad.records] == ["gsm8k-train-0/fobar/0"]
    assert [(r.reason, r.detail) for r in bad.rejections] == [("sv: missing x", f"x = 48: {SV_NO_X}")]
    assert bad.candidates == 2


@pytest.mark.slow
@pytest.mark.timeout(900)  # a 135M model on a shared 2-core CPU: minutes per answer under load
@ASYNC
async def test_sv_with_the_default_model_as_teacher(pool: KernelPool, natalia: Problem) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from runtime.backends.transformers_backend import TransformersBackend
    from runtime.settings import RuntimeSettings

    t0 = time.monotonic()
    loaded = TransformersBackend.load(None, RuntimeSettings(), device="cpu")
    loaded_s = time.monotonic() - t0
    teacher = TransformersBackend(loaded.model, loaded.tokenizer, RuntimeSettings(), name=loaded.name)
    try:
        ctx = context(pool.session, teacher=teacher, backend="transformers", model=loaded.name,
                      options={"self_verification": True})  # fmt: skip
        outcome = await generate(natalia, ctx)
    finally:
        await teacher.aclose()
    kinds = [r.provenance["kind"] for r in outcome.records] + [r.reason for r in outcome.rejections]
    print(f"\nSV with {loaded.name} (loaded in {loaded_s:.0f} s, seed took {outcome.wall_time_s:.0f} s): "
          f"{kinds}; {[r.detail for r in outcome.rejections]}")  # fmt: skip
    assert outcome.records[0].provenance["kind"] == "fobar"
    sv_done = [r for r in outcome.records if r.provenance["kind"] == "sv"]
    sv_rejected = [r for r in outcome.rejections if r.reason.startswith("sv: ")]
    assert len(sv_done) + len(sv_rejected) == 1
    for record in sv_done:
        assert record.question.endswith(SV_SUFFIX) and "x" in record.question
