"""Settings of a fine-tuning run (``TrainSettings``; environment variables prefixed ``MATHCODER_TRAIN_``).

One typed object with help text per field.  ``mathcoder train`` builds its options from these fields
(``training/train_cli.py``; a test checks that the two agree), passes on only the options given on
the command line, and the environment fills the rest, e.g. ``MATHCODER_TRAIN_LR=1e-4`` or
``MATHCODER_TRAIN_DATA='["a.jsonl", "b.jsonl.gz"]'``.  ``None`` for bf16, gradient checkpointing
and the attention implementation means: chosen from the hardware and the model (see each field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainSettings(BaseSettings):
    """What to fine-tune on which data, how, and where the run's files go."""

    model_config = SettingsConfigDict(env_prefix="MATHCODER_TRAIN_", extra="forbid")

    data: list[Path] = Field(
        min_length=1,
        description="SFT data: sft.jsonl files (or .jsonl.gz) of SftExample rows from `mathcoder generate`.",
    )
    out: Path = Field(
        description="Run folder: checkpoints/, model/ (the final Hugging Face model), train_results.json.",
    )
    name: str | None = Field(
        default=None, description="Run name in train_results.json; default: the run folder's name."
    )
    model: str | None = Field(
        default=None,
        description="Base model: a Hugging Face folder or hub id; default: the runtime's default model "
        "(SmolLM2-135M-Instruct) converted to a Hugging Face folder.",
    )
    format: Literal["auto", "markdown", "mathcoder"] = Field(
        default="auto",
        description="Trace format of the data; auto: the one all examples share. mathcoder adds its "
        "delimiters to the tokenizer and resizes the embeddings.",
    )
    epochs: float = Field(default=3.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    lr: float = Field(default=5e-5, gt=0, description="Peak learning rate (cosine decay to 0 after warm-up).")
    warmup_ratio: float = Field(
        default=0.03, ge=0, lt=1, description="Share of the steps spent warming the learning rate up from 0."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(
        default=8,
        ge=1,
        description="Rows per device per micro-batch (a row holds max_len tokens when packing).",
    )
    grad_accum: int = Field(default=1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_len: int = Field(default=2048, ge=8, description="Most tokens per example (and per packed row).")
    overlong: Literal["drop", "truncate"] = Field(
        default="drop", description="Examples over max_len: drop them, or keep their first max_len tokens."
    )
    packing: bool = Field(
        default=True,
        description="Pack several examples into each row (attention kept inside each example); "
        "off: one example per row, padded.",
    )
    lora: bool = Field(default=False, description="Train LoRA adapters (peft) instead of all weights.")
    lora_rank: int = Field(default=16, ge=1, description="LoRA rank r.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA alpha (the update is scaled by alpha/r).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    init_adapter: str | None = Field(
        default=None,
        description="Start the LoRA weights from this adapter folder instead of from scratch (to continue "
        "another run): a run folder's adapter, an exported one, or 'default' for the shipped adapter. "
        "Its rank, alpha and target modules are used; needs --lora.",
    )
    lora_merge: bool = Field(
        default=True,
        description="Save the LoRA run merged into full weights (loads everywhere); off: the adapter only.",
    )
    seed: int = Field(
        default=0, description="Seeds the initialisation of new weights, the eval split and the data order."
    )
    eval_fraction: float = Field(
        default=0.02,
        ge=0,
        lt=1,
        description="Share of seed problems held out for the eval loss (all traces of one problem stay together).",
    )
    eval_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps; default: only at the end."
    )
    save_steps: int = Field(default=500, ge=1, description="Save a resumable checkpoint every N steps.")
    save_total_limit: int | None = Field(default=2, ge=1, description="Keep at most this many checkpoints.")
    logging_steps: int = Field(
        default=10, ge=1, description="Log loss, learning rate and real-token share every N steps."
    )
    resume: bool = Field(
        default=True, description="Resume from the last checkpoint in the run folder, if there is one."
    )
    bf16: bool | None = Field(
        default=None,
        description="bf16 mixed precision (autocast); default: on where the hardware supports it "
        "(a bf16 GPU, or a CPU with AVX512-BF16 or AMX), off elsewhere.",
    )
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute activations in the backward pass (less memory, ~30% slower); "
        "default: on for models over 1B parameters on a GPU.",
    )
    attn_implementation: str | None = Field(
        default=None,
        description="transformers attention implementation (sdpa, eager, flex_attention, flash_attention_2); "
        "default: the model's (sdpa).",
    )
    torch_compile: bool = Field(default=False, description="Compile the model with torch.compile (GPU).")
    num_workers: int = Field(default=0, ge=0, description="Data loader worker processes.")

    @model_validator(mode="after")
    def _init_adapter_needs_lora(self) -> TrainSettings:
        if self.init_adapter is not None and not self.lora:
            raise ValueError("init_adapter continues a LoRA adapter: it needs lora (--lora)")
        return self

    @property
    def run_name(self) -> str:
        return self.name or self.out.resolve().name
