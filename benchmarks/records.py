"""The rows of a benchmark run: problems in, one record per problem out (JSONL, crash-safe).

A run folder holds ``config.json`` (what was run: ``RunConfig``) and ``records.jsonl`` (one
``ProblemRecord`` per finished problem, appended and fsynced as each finishes, so a killed run
loses at most the problems in flight).  Everything else — report, plots, comparisons, notebooks —
is computed from these two files.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runtime.loop import DEFAULT_MAX_TOKENS
from runtime.trace import Trace


class Problem(BaseModel):
    """One benchmark problem, from any data set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    question: str
    answer: str
    dataset: str
    split: str
    meta: dict[str, Any] = Field(default_factory=dict, description="Kept source fields: level, subject, ...")


class SampleRecord(BaseModel):
    """One trajectory of a problem."""

    answer: str | None
    correct: bool
    trace: Trace | None = None
    error: str | None = Field(default=None, description="Why the last attempt failed (backend or sandbox).")
    attempts: int = Field(default=1, ge=1, description="Trajectories run for this sample (1 + retries).")

    @property
    def infrastructure_failure(self) -> bool:
        """Ended on a backend or sandbox failure after its retries: not the model's outcome."""
        return self.error is not None


class ProblemRecord(BaseModel):
    """The outcome of one problem: its samples, the voted answer and its grade."""

    id: str
    dataset: str
    split: str
    question: str
    reference: str
    meta: dict[str, Any] = Field(default_factory=dict)
    answer: str | None = Field(description="The majority answer over the samples (the only one when k = 1).")
    correct: bool = Field(description="The majority answer grades equal to the reference (maj@k).")
    pass_at_k: bool = Field(description="Some sample's answer grades equal to the reference.")
    samples: list[SampleRecord]
    wall_time_s: float

    @property
    def infrastructure_failure(self) -> bool:
        """Some sample failed for a reason outside the model: the problem is not graded, and a
        resumed run solves it again."""
        return any(s.infrastructure_failure for s in self.samples)


class RunConfig(BaseModel):
    """What a run was asked to do; a resumed run must ask for the same."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="A registered data set (see benchmarks.datasets); with --data, a label.")
    split: str = Field(default="test", description="Split of the data set.")
    model: str | None = Field(
        default=None, description="Model path or id; default: the embedded SmolLM2-135M."
    )
    backend: str = Field(
        default="auto",
        description="Model backend: auto (llama.cpp on a CPU where built, else transformers), "
        "transformers, llamacpp, openai or vllm.",
    )
    adapter: str | None = Field(
        default=None,
        description="LoRA adapter on the default model: default (the shipped one), none (the plain base model) "
        "or an adapter folder; unset: MATHCODER_ADAPTER, else default.",
    )
    preset: str | None = Field(
        default=None, description="Prompt preset (runtime.prompts); default: the model's own (tir if none)."
    )
    samples: int = Field(default=1, ge=1, description="Trajectories per problem (k); >1 votes.")
    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature.")
    seed: int = Field(default=0, description="Sample j of a problem samples with seed seed + j.")
    limit: int | None = Field(default=None, ge=0, description="Only the first N problems.")
    concurrency: int = Field(default=8, ge=1, description="Trajectories in flight at once.")
    max_rounds: int = Field(default=8, ge=0, description="Most code cells per trajectory.")
    max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS, ge=1, description="Most tokens the model writes per trajectory."
    )
    wall_time_s: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds one trajectory may take: a guard against a hung engine, not a budget (the "
        "token and round budgets are). Results must not depend on the machine's speed, and on 2 cores "
        "with 32 in flight a trajectory of 1,024 tokens waits minutes for its share.",
    )
    data_file: str | None = Field(default=None, description="The JSONL file the problems came from (--data).")
    question_field: str = Field(default="question", description="Question field of --data rows.")
    answer_field: str = Field(default="answer", description="Answer field of --data rows.")
