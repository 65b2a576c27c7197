"""Modes ``teacher`` and ``self-train``: rejection sampling from a model (MathCoder, MARIO, RFT).

The model solves each seed problem ``k`` times through the agent loop (the benchmark harness's
solver, so limits and grading are the same); traces whose answer grades equal to the reference are
kept, exact repeats within the seed dropped here and near-duplicates later, at most
``keep_per_seed`` per seed.  ``self-train`` is the same sampling from the model being trained, on
its own training problems, usually merged with the data it was trained on (``--merge-with``).
"""

from __future__ import annotations

import time

from benchmarks.records import Problem
from training.generate.context import GenContext
from training.generate.dedupe import normalize, solution_text
from training.generate.records import GenRecord, Rejection, SeedOutcome


async def generate(seed: Problem, ctx: GenContext) -> SeedOutcome:
    t0 = time.monotonic()
    mode = ctx.config.mode
    samples = await ctx.sample_traces(seed)
    records: list[GenRecord] = []
    rejections: list[Rejection] = []
    seen: set[str] = set()
    for j, sample in enumerate(samples):
        trace = sample.trace
        if trace is None or sample.error is not None:
            rejections.append(Rejection(seed_id=seed.id, mode=mode, reason="error", detail=str(sample.error)))
            continue
        if not sample.correct:
            detail = f"sample {j}: answer {sample.answer!r}, reference {seed.answer!r}"
            reason = "no answer" if sample.answer is None else "wrong answer"
            rejections.append(Rejection(seed_id=seed.id, mode=mode, reason=reason, detail=detail))
            continue
        key = normalize(solution_text(trace))
        if key in seen or len(records) >= ctx.config.keep_per_seed:
            continue
        seen.add(key)
        records.append(
            GenRecord(
                id=f"{seed.id}/{mode}/{j}", seed_id=seed.id, mode=mode, question=seed.question,
                answer=seed.answer, trace=trace,
                provenance={
                    "dataset": seed.dataset, "split": seed.split, "sample": j,
                    "teacher": {"backend": ctx.config.backend, "model": ctx.config.model},
                    "sampling": trace.metadata.sampling, "preset": ctx.config.preset,
                    "run_seed": ctx.config.seed,
                },
            )
        )  # fmt: skip
    return SeedOutcome(
        id=seed.id, records=records, rejections=rejections, candidates=len(samples),
        wall_time_s=time.monotonic() - t0,
    )  # fmt: skip
