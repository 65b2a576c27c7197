"""The typed rows of a data-generation run: its config, each seed's outcome, each kept example.

A run folder holds ``config.json`` (``GenerateConfig``) and ``outcomes.jsonl`` (one ``SeedOutcome``
per finished seed problem, appended as each finishes, so a killed run resumes where it stopped).
The finished data set — ``traces.jsonl`` of ``GenRecord``, ``sft.jsonl`` of ``SftExample``,
``rejections.jsonl`` and the card — is derived from those two files.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.loop import DEFAULT_MAX_TOKENS
from runtime.trace import Trace

Mode = Literal["gsm8k-calc", "gsm8k-text", "backward", "teacher", "self-train", "rephrase", "concept-graph"]


class GenerateConfig(BaseModel):
    """What a generation run was asked to do; a resumed run must ask for the same."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode
    dataset: str = Field(default="gsm8k", description="Seed data set (a registered name).")
    split: str = Field(default="train", description="Seed split.")
    data_file: str | None = Field(default=None, description="Seed problems from this JSONL instead.")
    limit: int | None = Field(default=None, ge=0, description="Only the first N seed problems.")
    seed: int = Field(default=0, description="Run seed: masks, walks and sampling repeat with it.")
    samples: int = Field(default=1, ge=1, description="Trajectories per question (teacher modes).")
    keep_per_seed: int = Field(
        default=4, ge=1, description="At most this many distinct kept traces per seed."
    )
    temperature: float = Field(default=0.0, ge=0.0, description="Teacher sampling temperature.")
    backend: str | None = Field(
        default=None,
        description="Teacher: auto (the local default model on llama.cpp where built, else transformers), "
        "transformers, llamacpp, openai, vllm.",
    )
    model: str | None = Field(default=None, description="Teacher model name or path.")
    base_url: str | None = Field(default=None, description="Teacher server URL (backend openai).")
    adapter: str | None = Field(
        default=None,
        description="LoRA adapter on the default teacher model: default (the shipped one), none (the plain "
        "base model) or an adapter folder (self-train: the model being trained); unset: MATHCODER_ADAPTER, "
        "else default.",
    )
    preset: str | None = Field(
        default=None,
        description="Prompt preset the teacher solves with; default: the teacher model's own (tir if none).",
    )
    max_rounds: int = Field(default=8, ge=1, description="Code cells per trajectory at most.")
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, description="Tokens per trajectory at most.")
    concurrency: int = Field(default=8, ge=1, description="Seeds (and teacher calls) in flight.")
    variants: int = Field(
        default=1, ge=1, description="New questions per seed (backward, rephrase, concept-graph)."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Mode-specific settings.")


class Rejection(BaseModel):
    """A candidate that did not become an example, and why (logged in ``rejections.jsonl``)."""

    seed_id: str
    mode: str
    reason: str
    detail: str = ""


class GenRecord(BaseModel):
    """One kept training example: the question, its validated trace, and where it came from."""

    id: str = Field(description="Unique in the data set: '<seed id>/<mode>/<n>'.")
    seed_id: str
    mode: str
    question: str
    answer: str
    trace: Trace
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="Seed data set and row, teacher and sampling, masked number, repairs, run seed, ...",
    )


class SeedOutcome(BaseModel):
    """Everything one seed problem produced: kept records and logged rejections."""

    id: str = Field(description="The seed problem's id (one outcome per seed per run).")
    records: list[GenRecord] = Field(default_factory=list)
    rejections: list[Rejection] = Field(default_factory=list)
    candidates: int = Field(default=0, description="Candidates tried (kept + rejected).")
    repaired: int = Field(default=0, description="Kept records whose source needed a repair.")
    wall_time_s: float = 0.0
    infrastructure_failure: str | None = Field(
        default=None,
        description="The sandbox or the teacher failed on this seed after its retries (runtime.failures): "
        "nothing was kept or rejected, and a resumed run tries the seed again.",
    )
    attempts: int = Field(default=1, ge=1, description="Tries of this seed (1 + infrastructure retries).")


class SftSegment(BaseModel):
    """A piece of the rendered example and whether the loss applies to it."""

    text: str
    train: bool


class SftExample(BaseModel):
    """The SFT view of one record: the rendered text cut into trained and masked segments.

    Concatenating the segments gives the full rendering; the prompt and every execution output
    (the runtime wrote them) are masked; the model's text and code are trained.
    """

    id: str
    format: str
    segments: list[SftSegment]

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)
