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
    error: str | None = None


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


class RunConfig(BaseModel):
    """What a run was asked to do; a resumed run must ask for the same."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    split: str
    model: str | None = None
    backend: str = "transformers"
    preset: str = "tir"
    samples: int = 1
    temperature: float = 0.0
    seed: int = Field(default=0, description="Sample j of a problem samples with seed seed + j.")
    limit: int | None = None
    concurrency: int = 8
    max_rounds: int = 8
    max_tokens: int = DEFAULT_MAX_TOKENS
    data_file: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"
