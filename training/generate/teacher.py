"""Modes ``teacher`` and ``self-train``: rejection sampling from a model (MathCoder, MARIO, RFT).

The model solves each seed problem ``k`` times through the agent loop (the benchmark harness's
solver, so limits and grading are the same); traces whose answer grades equal to the reference are
kept, exact repeats within the seed dropped here and near-duplicates later, at most
``keep_per_seed`` per seed.  ``self-train`` is the same sampling from the model being trained, on
its own training problems, usually merged with the data it was trained on (``--merge-with``).
"""

from __future__ import annotations

from benchmarks.records import Problem
from runtime.trace import Trace
from training.generate.context import GenContext
from training.generate.keep import Keeper
from training.generate.records import GenRecord, SeedOutcome


async def generate(seed: Problem, ctx: GenContext) -> SeedOutcome:
    cfg = ctx.config
    mode = cfg.mode
    keeper = Keeper(seed.id, mode, cfg.keep_per_seed)
    samples = await ctx.sample_traces(seed)
    for j, sample in enumerate(samples):
        label = f"sample {j}"
        wrong = (
            None
            if sample.correct
            else ("wrong answer", f"{label}: answer {sample.answer!r}, reference {seed.answer!r}")
        )

        def record(trace: Trace, j: int = j) -> GenRecord:
            return GenRecord(
                id=f"{seed.id}/{mode}/{j}",
                seed_id=seed.id,
                mode=mode,
                question=seed.question,
                answer=seed.answer,
                trace=trace,
                provenance={
                    "dataset": seed.dataset,
                    "split": seed.split,
                    "sample": j,
                    "teacher": {"backend": cfg.backend, "model": cfg.model, "adapter": cfg.adapter},
                    "sampling": trace.metadata.sampling,
                    "preset": cfg.preset,
                    "run_seed": cfg.seed,
                },
            )

        keeper.offer(label, sample, wrong, record)
    return keeper.outcome()
