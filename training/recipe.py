"""The CPU experiment's one training recipe, and the rebuild of the default adapter from nothing.

Every run of the experiment (issue #13, ``docs/results.md``) trains with ``RECIPE``; only the data
(and, for the runs that continue another, the starting weights) differ.  Chosen from the side-by-side
measurement of ``python -m training.throughput_bench`` (full fine-tuning vs LoRA, fp32 vs bf16, on
packed gsm8k-calc rows): on a quiet AVX2 machine full fine-tuning in fp32 runs ~106 tok/s, which is
near the two cores' fp32 peak (6 x 135M x 1,022 tokens in ~9 s is ~90 GFLOP/s), and LoRA on every
linear layer ~1.15-1.2x that *without* adapter dropout (dropout 0.05 copies every layer's input and
cost ~25%, making LoRA slower than full fine-tuning: 100 vs 106 tok/s); 1.6x for q/v-only in bf16 on
an AVX512-BF16 one.  An adapter is also what the runtime ships (rank 32 on every linear layer:
~19.5 MB in float16), so the recipe is LoRA without dropout.

``make adapter`` (``python -m training.recipe``) rebuilds the shipped adapter: ``mathcoder generate
gsm8k-calc`` (GSM8K train annotations -> executed traces), ``mathcoder train`` with ``RECIPE``
(resumable: rerun the same command after an interruption), ``training.export_adapter``.  Each step
is the public command, run as a child process, so the rebuild is exactly what a user would type.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RECIPE: dict[str, Any] = {
    "lora": True,
    "lora_rank": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.0,  # see the docstring: dropout cost ~25% of the speed on the CPU
    "lora_merge": False,  # the run folder keeps the adapter; export_adapter ships it
    "lr": 5e-4,
    "epochs": 1.0,
    "warmup_ratio": 0.03,
    "batch_size": 2,  # 4 rows x 1,024 tokens peaked at ~15 GB (fp32 logits over a 49k vocabulary)
    "grad_accum": 4,  # 8 packed rows of 1,024 tokens per optimizer step (85 steps for an epoch of DATA_LIMIT)
    "max_len": 1024,
    "packing": True,
    "eval_fraction": 0.02,
    "save_steps": 10,  # a checkpoint every ~11 min on a 2-core CPU: an interruption costs little
    "save_total_limit": 2,
    "logging_steps": 1,
}
"""``mathcoder train`` settings shared by every run (see training/settings.py for each field)."""

DATA_LIMIT = 2000
"""Every run's data comes from the first 2,000 GSM8K train problems: one epoch of their gsm8k-calc
traces (~1,930, ~0.66 M tokens) is ~90 min of a quiet 2-core AVX2 CPU, so a run -- and a rebuild --
fits in one session of a machine that may not be there the next day (``runs/`` does not survive it)."""


def train_args(recipe: dict[str, Any]) -> list[str]:
    """``recipe`` as ``mathcoder train`` options."""
    args: list[str] = []
    for key, value in recipe.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            args += [flag, str(value)]
    return args


def _mathcoder(*args: str) -> None:
    command = [str(Path(sys.executable).with_name("mathcoder")), *args]
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def rebuild(
    out: Path,
    *,
    limit: int | None = None,
    max_steps: int | None = None,
    model: str | None = None,
    extra_train: list[str] | None = None,
) -> Path:
    """Data, training and export under ``out``; returns the adapter folder.  Resumes where it stopped."""
    data = out / "generate" / "gsm8k-calc"
    generate = ["generate", "gsm8k-calc", "--out", str(data)]
    if limit is not None:
        generate += ["--limit", str(limit)]
    _mathcoder(*generate)
    run = out / "train" / "calc"
    train = [
        "train",
        "--data",
        str(data / "sft.jsonl"),
        "--out",
        str(run),
        "--name",
        "calc",
        *train_args(RECIPE),
    ]
    if max_steps is not None:
        train += ["--max-steps", str(max_steps)]
    if model is not None:
        train += ["--model", model]
    _mathcoder(*train, *(extra_train or []))
    adapter = out / "adapter"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.export_adapter",
            str(run),
            str(adapter),
            "--name",
            "smollm2-135m-tir",
        ],
        check=True,
    )
    return adapter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Rebuild the default adapter from nothing (data, training, export)."
    )
    parser.add_argument("--out", type=Path, default=Path("runs/rebuild"))
    parser.add_argument(
        "--limit", type=int, default=DATA_LIMIT, help="Only the first N GSM8K train problems."
    )
    parser.add_argument("--max-steps", type=int, default=None, help="Stop training after N steps.")
    parser.add_argument("--model", default=None, help="Base model folder (default: the default model).")
    args = parser.parse_args(argv)
    adapter = rebuild(args.out, limit=args.limit, max_steps=args.max_steps, model=args.model)
    print(json.dumps({"adapter": str(adapter)}))


if __name__ == "__main__":
    main()
