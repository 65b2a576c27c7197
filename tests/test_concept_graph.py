"""The concept-graph mode (MathScale-style): parsing the teacher's concepts, the co-occurrence graph
and its walks, and question synthesis kept by self-consistency (real kernels, a scripted teacher;
the real default model runs the whole pipeline once in a slow test)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from benchmarks.records import Problem
from runtime.backends.base import Backend
from runtime.backends.scripted import ScriptedBackend, Step
from runtime.grading import is_equivalent
from runtime.trace import OutputBlock
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings
from training.generate.concept_graph import (
    ConceptGraph,
    ConceptRecord,
    build_graph,
    extract,
    generate,
    parse_concepts,
    walk_seeds,
)
from training.generate.context import GenContext
from training.generate.records import GenerateConfig

Script = dict[str, Sequence[Step | str]]
ASYNC = pytest.mark.asyncio(loop_scope="module")
SETTINGS = SandboxSettings(
    pool_size=2, max_kernels=8, cell_timeout_s=10, uid_base=67010,
    run_dir=SandboxSettings().run_dir / "test-augment",
)  # fmt: skip

WALK = Problem(
    id="walk-0", question="", answer="", dataset="concept-graph", split="synthetic",
    meta={"topics": ["fractions", "arithmetic"], "knowledge_points": ["adding unit fractions"]},
)  # fmt: skip
TEACHER_KEY = "Topics: fractions; arithmetic"  # what the question-writing prompt says, and nothing else does
QUESTION = "A recipe uses 1/4 cup of sugar and then another 1/4 cup. How many cups of sugar does it use?"


def ctx_for(pool: KernelPool, script: Script, **config: Any) -> GenContext:
    settings: dict[str, Any] = {"mode": "concept-graph", "backend": "scripted", "concurrency": 1, **config}
    return GenContext(
        config=GenerateConfig(**settings), sessions=pool.session, backend=ScriptedBackend(script)
    )


def record(seed: str, topics: list[str], points: list[str]) -> ConceptRecord:
    return ConceptRecord(id=seed, topics=topics, knowledge_points=points, raw="")


# A hand-made set: a-b twice, a-c once; d alone (another component).
RECORDS = [
    record("s1", ["a", "b"], ["x", "y"]),
    record("s2", ["a", "b"], ["x"]),
    record("s3", ["a", "c"], ["z"]),
    record("s4", ["d"], ["w"]),
    ConceptRecord(
        id="s5", topics=[], knowledge_points=[], raw="??", error="no topics and no knowledge points"
    ),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        yield pool


# ---------------------------------------------------------------------------------------- parsing


def test_parse_well_formed_lines() -> None:
    parsed = parse_concepts(
        "s", "Topics: Arithmetic; Ratios\nKnowledge points: halving a number; adding two totals"
    )
    assert (parsed.topics, parsed.knowledge_points, parsed.error) == (
        ["arithmetic", "ratios"], ["halving a number", "adding two totals"], None
    )  # fmt: skip


def test_parse_messy_reply() -> None:
    raw = (
        "Sure! Here you go:\n\n"
        "**Topics:** Arithmetic, Word  Problems, arithmetic\n"
        "**Knowledge Points:**\n"
        "- Halving a number.\n"
        "- 2) adding   totals\n"
        "- <knowledge point>\n"
        f"- {'a very long item that goes on ' * 5}\n"
        "\nHope this helps! Topics are fun."
    )
    parsed = parse_concepts("s", raw)
    assert parsed.topics == ["arithmetic", "word problems"]
    assert parsed.knowledge_points == ["halving a number", "adding totals"]
    assert parsed.error is None and parsed.raw == raw


def test_parse_json_reply() -> None:
    raw = 'Answer: {"topics": ["Geometry"], "knowledge_points": "area of a circle; value of pi"} done'
    parsed = parse_concepts("s", raw)
    assert (parsed.topics, parsed.knowledge_points) == (["geometry"], ["area of a circle", "value of pi"])


def test_parse_failures_are_recorded_not_raised() -> None:
    garbage = parse_concepts("s", "I like turtles. {not json}")
    assert (garbage.topics, garbage.knowledge_points) == ([], [])
    assert garbage.error == "no topics and no knowledge points in the reply"
    assert parse_concepts("s", "  ").error == "empty reply"
    half = parse_concepts("s", "Topics: algebra")
    assert half.topics == ["algebra"] and half.error == "no knowledge points in the reply"


@ASYNC
async def test_extract_asks_the_teacher(pool: KernelPool) -> None:
    seed = Problem(id="q1", question=QUESTION, answer="0.5", dataset="t", split="train")
    ctx = ctx_for(pool, {QUESTION: [Step("Topics: Fractions\nKnowledge points: adding fractions", eos=True)]})
    concepts = await extract(seed, ctx)
    assert concepts == ConceptRecord(
        id="q1", topics=["fractions"], knowledge_points=["adding fractions"],
        raw="Topics: Fractions\nKnowledge points: adding fractions",
    )  # fmt: skip
    assert isinstance(ctx.backend, ScriptedBackend)
    assert ctx.backend.requests[0].sampling.seed == ctx.sampling_seed("q1", "concepts")


# ------------------------------------------------------------------------------------------ graph


def test_edge_weights_count_seeds() -> None:
    graph = build_graph(RECORDS)
    assert graph.topics == {"a": 3, "b": 2, "c": 1, "d": 1}
    assert graph.knowledge_points == {"x": 2, "y": 1, "z": 1, "w": 1}
    assert graph.topic_topic == {"a": {"b": 2, "c": 1}, "b": {"a": 2}, "c": {"a": 1}}
    assert graph.topic_kp == {
        "a": {"x": 2, "y": 1, "z": 1}, "b": {"x": 2, "y": 1}, "c": {"z": 1}, "d": {"w": 1}
    }  # fmt: skip
    assert graph.kp_kp == {"x": {"y": 1}, "y": {"x": 1}}
    assert graph.stats() == {
        "seeds": 4, "topics": 4, "knowledge_points": 4, "topic_topic_edges": 2, "topic_kp_edges": 7,
        "kp_kp_edges": 1,
    }  # fmt: skip


def test_a_name_counts_once_per_seed() -> None:
    graph = ConceptGraph()
    graph.add(["a", "a", "b"], ["x", "x"])
    assert graph.topics == {"a": 1, "b": 1} and graph.topic_topic == {"a": {"b": 1}, "b": {"a": 1}}
    assert graph.topic_kp == {"a": {"x": 1}, "b": {"x": 1}} and graph.kp_kp == {}


def test_walks_are_deterministic_connected_and_cover_the_graph() -> None:
    graph = build_graph(RECORDS)
    walks = [graph.sample(random.Random(i), 2, 2) for i in range(300)]
    assert walks == [graph.sample(random.Random(i), 2, 2) for i in range(300)]
    assert build_graph(list(reversed(RECORDS))).sample(random.Random(7), 2, 2) == walks[7]  # order-free
    seen_topics = {t for topics, _ in walks for t in topics}
    seen_points = {k for _, points in walks for k in points}
    assert seen_topics == set(graph.topics) and seen_points == set(graph.knowledge_points)
    for topics, points in walks:
        assert len(set(topics)) == len(topics) and len(set(points)) == len(points)
        for i, topic in enumerate(topics[1:], start=1):
            assert any(topic in graph.topic_topic.get(t, {}) for t in topics[:i])  # never a jump
        for point in points:
            assert any(point in graph.topic_kp.get(t, {}) for t in topics) or any(
                point in graph.kp_kp.get(k, {}) for k in points
            )
        if topics == ["d"]:
            assert points == ["w"]  # the isolated component returns fewer than asked, nothing unrelated
    # Topics are drawn by frequency: "a" (3 of 7 topic mentions) starts more walks than "c" (1).
    starts = [topics[0] for topics, _ in walks]
    assert starts.count("a") > starts.count("c")


def test_walk_on_a_one_node_graph() -> None:
    lone = build_graph([record("s", ["algebra"], [])])
    assert lone.sample(random.Random(0), 3, 3) == (["algebra"], [])
    assert lone.stats()["topic_topic_edges"] == 0
    one_point = build_graph([record("s", ["algebra"], ["linear equations"])])
    assert one_point.sample(random.Random(1), 3, 3) == (["algebra"], ["linear equations"])
    assert ConceptGraph().sample(random.Random(0), 2, 2) == ([], [])


def test_walk_seeds(tmp_path: Path) -> None:
    graph = build_graph(RECORDS)

    def seeds(run_seed: int) -> list[Problem]:
        config = GenerateConfig(
            mode="concept-graph", seed=run_seed, options={"walk_topics": 2, "walk_kps": 3}
        )
        return walk_seeds(graph, 20, GenContext(config=config, sessions=None))  # type: ignore[arg-type]

    walks = seeds(0)
    assert [w.id for w in walks] == [f"walk-{i}" for i in range(20)]
    assert all(
        (w.dataset, w.split, w.question, w.answer) == ("concept-graph", "synthetic", "", "") for w in walks
    )
    assert all(1 <= len(w.meta["topics"]) <= 2 and len(w.meta["knowledge_points"]) <= 3 for w in walks)
    assert seeds(0) == walks and seeds(1) != walks
    with pytest.raises(ValueError, match="no topics"):
        walk_seeds(ConceptGraph(), 1, GenContext(config=GenerateConfig(mode="concept-graph"), sessions=None))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- generation


def answers(*boxed: str) -> list[Step | str]:
    return [Step(f"Add the parts.\nThe answer is \\boxed{{{b}}}.", eos=True) for b in boxed]


@ASYNC
async def test_a_self_consistent_question_is_kept_with_the_majority(pool: KernelPool) -> None:
    code = (
        "Add the two quarters.\n```python\nfrom fractions import Fraction\nprint(Fraction(1, 4) * 2)\n```\n"
    )
    script: Script = {
        TEACHER_KEY: [Step(f"Problem: {QUESTION}\n\nSolution: 1/4 + 1/4 = 1/2", eos=True)],
        QUESTION: [code, Step("It uses \\boxed{\\frac{1}{2}} cup.", eos=True), *answers("0.5", "3")],
    }
    ctx = ctx_for(pool, script, samples=3, seed=3)
    outcome = await generate(WALK, ctx)
    assert [r.id for r in outcome.records] == ["walk-0/0", "walk-0/1"]
    first = outcome.records[0]
    assert (first.seed_id, first.mode, first.question, first.answer) == (
        "walk-0", "concept-graph", QUESTION, "\\frac{1}{2}"
    )  # fmt: skip
    output = first.trace.blocks[2]
    assert isinstance(output, OutputBlock) and output.output == "1/2"  # really ran in a kernel
    assert first.provenance == {
        "topics": ["fractions", "arithmetic"], "knowledge_points": ["adding unit fractions"],
        "agreement": 2 / 3, "teacher": "scripted", "temperature": 0.0, "run_seed": 3, "sample": 0,
    }  # fmt: skip
    assert [(r.reason, r.detail) for r in outcome.rejections] == [
        ("minority answer", "walk-0#2: '3' vs majority '\\\\frac{1}{2}'")
    ]
    assert outcome.candidates == 3
    assert isinstance(ctx.backend, ScriptedBackend)
    assert ctx.backend.requests[0].sampling.seed == ctx.sampling_seed("walk-0", "question")


@ASYNC
async def test_an_inconsistent_question_is_rejected_with_its_votes(pool: KernelPool) -> None:
    script: Script = {TEACHER_KEY: [Step(QUESTION, eos=True)], QUESTION: answers("1", "2", "3")}
    outcome = await generate(WALK, ctx_for(pool, script, samples=3))
    assert outcome.records == [] and outcome.candidates == 1
    [rejection] = outcome.rejections
    assert rejection.reason == "no agreement"
    assert '"votes": [["1", 1], ["2", 1], ["3", 1]], "k": 3' in rejection.detail


@ASYNC
async def test_two_samples_must_agree(pool: KernelPool) -> None:
    # 1 of 2 meets min_agreement 0.5 but is no agreement at all.
    script: Script = {TEACHER_KEY: [Step(QUESTION, eos=True)], QUESTION: answers("1", "2")}
    outcome = await generate(WALK, ctx_for(pool, script, samples=2))
    assert [r.reason for r in outcome.rejections] == ["no agreement"]
    # A single sample is its own majority.
    script = {TEACHER_KEY: [Step(QUESTION, eos=True)], QUESTION: answers("0.5")}
    outcome = await generate(WALK, ctx_for(pool, script, samples=1))
    assert [(r.answer, r.provenance["agreement"]) for r in outcome.records] == [("0.5", 1.0)]


@ASYNC
async def test_min_agreement_option(pool: KernelPool) -> None:
    script: Script = {
        TEACHER_KEY: [Step(QUESTION, eos=True)], QUESTION: answers("0.5", "1/2", "3", "4")
    }  # fmt: skip
    outcome = await generate(WALK, ctx_for(pool, script, samples=4, options={"min_agreement": 0.75}))
    assert [r.reason for r in outcome.rejections] == ["no agreement"]


@ASYNC
@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("", "empty"),
        ("Sure.", "too short"),
        ("The sugar recipe is a lovely thing to bake on a Sunday.", "not a question"),
        (f"{QUESTION}\nLet's solve it: 1/4 + 1/4 = 1/2.", "contains a solution"),
    ],
)
async def test_unusable_questions_are_rejected_before_solving(
    pool: KernelPool, written: str, reason: str
) -> None:
    ctx = ctx_for(pool, {TEACHER_KEY: [Step(written, eos=True)]})
    outcome = await generate(WALK, ctx)
    assert [r.reason for r in outcome.rejections] == [reason] and outcome.records == []
    assert isinstance(ctx.backend, ScriptedBackend) and len(ctx.backend.requests) == 1


# ------------------------------------------------------------------------------- the real model


REAL_CONFIG = GenerateConfig(
    mode="concept-graph", backend="transformers", samples=2, max_tokens=96, max_rounds=2,
    temperature=0.7, concurrency=2, options={"extract_max_tokens": 64, "question_max_tokens": 96},
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)  # a 135M model on a shared CPU writes a few tokens a second
@pytest.mark.xfail(
    strict=True,
    reason="the 135M default model answers the extraction prompt in prose, not as topics and knowledge "
    "points (seen: 'The problem involves calculating ...'); strict: a model that learns it makes this fail",
)
@ASYNC
async def test_the_default_model_extracts_concepts(
    pool: KernelPool, teacher: Backend, gsm8k_seeds: list[Problem]
) -> None:
    ctx = GenContext(config=REAL_CONFIG, sessions=pool.session, backend=teacher, limiter=asyncio.Semaphore(2))
    concepts = [await extract(seed, ctx) for seed in gsm8k_seeds]
    for c in concepts:
        print(f"\n{c.id}: topics {c.topics}, points {c.knowledge_points}, error {c.error}\n  raw {c.raw!r}")
    graph = build_graph(concepts)
    assert graph.topics and graph.stats()["knowledge_points"] > 0, [c.raw for c in concepts]


@pytest.mark.slow
@pytest.mark.timeout(900)
@ASYNC
async def test_the_default_model_synthesises_questions_from_a_graph(
    pool: KernelPool, teacher: Backend
) -> None:
    """Phase 2 on its own, from a given graph (phase 1 is the test above): every walk is accounted
    for, and a kept question's trace answers with the majority answer it was kept for."""
    ctx = GenContext(config=REAL_CONFIG, sessions=pool.session, backend=teacher, limiter=asyncio.Semaphore(2))
    graph = build_graph([record("given", ["arithmetic"], ["adding whole numbers"])])
    outcomes = [await generate(walk, ctx) for walk in walk_seeds(graph, 1, ctx)]
    assert outcomes
    for outcome in outcomes:
        print(f"{outcome.id}: {len(outcome.records)} kept, {outcome.candidates} candidates, "
              f"{outcome.wall_time_s:.1f} s")  # fmt: skip
        for rejection in outcome.rejections:
            print(f"  rejected: {rejection.reason}: {rejection.detail[:300]}")
        for kept in outcome.records:
            print(f"  kept {kept.id}: {kept.question!r} -> {kept.answer} ({kept.provenance['agreement']})")
        assert outcome.candidates >= 1 and len(outcome.records) + len(outcome.rejections) >= 1
        assert all(r.reason for r in outcome.rejections)
        for kept in outcome.records:
            assert kept.provenance["agreement"] >= REAL_CONFIG.options.get("min_agreement", 0.5)
            assert kept.trace.final_answer is not None and is_equivalent(kept.trace.final_answer, kept.answer)
