"""Training throughput on this machine: full fine-tuning vs LoRA, fp32 vs bf16 autocast, side by side.

``python -m training.throughput_bench --data runs/generate/gsm8k-calc/sft.jsonl`` encodes and packs
the data exactly as ``mathcoder train`` does (``training.encode``, ``training.packing``), builds one
model and AdamW optimizer per configuration, and then runs the configurations in turn, one
optimizer step each per round, for ``--rounds`` rounds.  Interleaving puts every configuration
under the same load (these machines are shared and noisy), so the ratios are fair even when the
absolute numbers are not.  A step is forward + backward + optimizer on ``--batch-size`` packed rows
of ``--max-len`` tokens; tokens/s counts real (non-pad) tokens, as ``train_results.json`` does.

bf16 rows run where the CPU lacks native bf16 too (PyTorch then emulates it), so the table shows
what ``--bf16`` would cost here; ``mathcoder train`` turns it on by default only where it is native
(``runtime.cpu.cpu_supports_bf16``).

``mathcoder train`` backs large tensors with huge pages (``runtime.cpu.prefer_huge_page_allocations``);
this module imports torch before it could, so run it as ``THP_MEM_ALLOC_ENABLE=1 python -m
training.throughput_bench ...`` to measure what the trainer gets (the JSON records the setting).

Written here rather than under ``benchmarks/`` because it uses the training layer, which sits above
the benchmarks in the package order.  Prints a table and a one-line JSON summary; writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_io import print_table, write_results
from runtime.cpu import cpu_supports_bf16, huge_page_state
from training.encode import encode_all, load_sft, resolve_format
from training.packing import RowCollator, pack_rows
from training.recipe import RECIPE
from training.settings import TrainSettings
from training.trainer import (
    load_model,
    load_tokenizer,
    peft_input_casts,
    resolve_model_source,
    wrap_lora,
)


@dataclass
class Config:
    name: str
    lora: bool
    bf16: bool
    # LoRA's frozen base weights stored in bf16 (autocast re-casts them each step otherwise)
    frozen_bf16: bool = False
    # peft's own cast of each adapted layer's input to float32 (the trainer turns it off)
    peft_input_cast: bool = False

    @property
    def extra(self) -> bool:
        """A candidate measured on request only, not in the default set."""
        return self.frozen_bf16 or self.peft_input_cast


CONFIGS = [
    Config("full fp32", lora=False, bf16=False),
    Config("full bf16", lora=False, bf16=True),
    Config("lora fp32", lora=True, bf16=False),
    Config("lora bf16", lora=True, bf16=True),
    Config("lora bf16 frozen-bf16", lora=True, bf16=True, frozen_bf16=True),
    Config("lora bf16 peft-cast", lora=True, bf16=True, peft_input_cast=True),
]


@dataclass
class Runner:
    config: Config
    model: Any
    optimizer: torch.optim.Optimizer
    times: list[float]
    tokens: list[int]

    def step(self, batch: dict[str, Any]) -> None:
        inputs = {k: v for k, v in batch.items() if k not in ("real_tokens", "slots")}
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.config.bf16 else contextlib.nullcontext()
        )
        started = time.perf_counter()
        with autocast:
            loss = self.model(**inputs).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - started)
        self.tokens.append(int(batch["real_tokens"]))

    def rate(self, skip: int) -> float:
        """Median tokens/s over the steps after the first ``skip`` (warm-up)."""
        rates = [n / t for n, t in zip(self.tokens[skip:], self.times[skip:], strict=True)]
        return statistics.median(rates) if rates else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="An sft.jsonl from `mathcoder generate`.")
    parser.add_argument("--model", default=None, help="Base model folder (default: the default model).")
    parser.add_argument("--batch-size", type=int, default=4, help="Packed rows per step.")
    parser.add_argument("--max-len", type=int, default=1024, help="Tokens per packed row.")
    parser.add_argument("--rounds", type=int, default=6, help="Steps per configuration (interleaved).")
    parser.add_argument("--warmup", type=int, default=1, help="Steps per configuration left out.")
    parser.add_argument("--lora-rank", type=int, default=RECIPE["lora_rank"])
    parser.add_argument(
        "--lora-dropout", type=float, default=RECIPE["lora_dropout"], help="Default: the recipe's (none)."
    )
    parser.add_argument(
        "--configs",
        default=",".join(c.name for c in CONFIGS if not c.extra),
        help=f"Comma-separated, of: {', '.join(c.name for c in CONFIGS)}.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train_throughput.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    examples = load_sft([args.data])
    fmt = resolve_format(examples)
    source = resolve_model_source(args.model)
    tokenizer, added = load_tokenizer(source, fmt)
    encoded, _ = encode_all(examples, tokenizer, max_len=args.max_len, overlong="drop", fmt=fmt)
    rows = pack_rows(encoded, args.max_len)
    needed = args.batch_size * args.rounds
    if len(rows) < needed:
        raise SystemExit(f"{args.data} packs into {len(rows)} rows; {needed} are needed")
    collate = RowCollator(pad_id=int(tokenizer.pad_token_id), packed=True)
    batches = [collate(rows[i : i + args.batch_size]) for i in range(0, needed, args.batch_size)]

    wanted = {name.strip() for name in args.configs.split(",")}
    settings = TrainSettings(
        data=[args.data], out=Path("/dev/null"), lora_rank=args.lora_rank, lora_dropout=args.lora_dropout
    )
    runners: list[Runner] = []
    for config in (c for c in CONFIGS if c.name in wanted):
        model = load_model(source, tokenizer, attn_implementation=None)
        if config.frozen_bf16:
            model = model.to(torch.bfloat16)  # peft keeps the adapters it adds in float32
        if config.lora:
            model = wrap_lora(model, settings, tokenizer, added)
        if config.peft_input_cast:
            peft_input_casts(model, on=True)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        runners.append(Runner(config, model, torch.optim.AdamW(params, lr=1e-5), [], []))

    for batch in batches:  # round r: every configuration takes the same batch, one after the other
        for runner in runners:
            runner.step(batch)

    baseline = runners[0].rate(args.warmup)
    table = []
    results: dict[str, Any] = {}
    for runner in runners:
        rate = runner.rate(args.warmup)
        trainable = sum(p.numel() for p in runner.model.parameters() if p.requires_grad)
        results[runner.config.name] = {
            "tokens_per_s": round(rate, 1),
            "vs_first": round(rate / baseline, 3),
            "step_s": [round(t, 3) for t in runner.times],
            "trainable_params": trainable,
        }
        table.append([runner.config.name, f"{rate:.0f}", f"{rate / baseline:.2f}x", f"{trainable:,}"])
    print_table(
        f"training throughput, {args.batch_size} rows x {args.max_len} tokens, {args.rounds} rounds",
        ["config", "tokens/s", f"vs {runners[0].config.name}", "trainable"],
        table,
    )
    settings_out = {
        "data": str(args.data),
        "model": source,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "lora_rank": args.lora_rank,
        "lora_dropout": args.lora_dropout,
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "huge_pages": huge_page_state(),
    }
    summary = {name: r["tokens_per_s"] for name, r in results.items()}
    write_results(args.out, "train_throughput", {"settings": settings_out, "configs": results}, summary)


if __name__ == "__main__":
    main()
