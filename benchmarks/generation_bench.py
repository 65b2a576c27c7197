"""CPU generation engines side by side: completion tokens/s by concurrency, on the same prompts.

    python -m benchmarks.generation_bench [--candidates transformers,transformers-bf16,llamacpp]
        [--concurrency 1,8,32,64] [--prompts 64] [--max-tokens 256] [--out FILE]

The prompts are GSM8K test questions rendered with the ``tir`` (few-shot) and ``tir-sft`` presets,
half each, always on the **base** default model, so the numbers stay comparable as the default
changes.  Each candidate is built through the runtime's one backend factory (what ``solve``,
``bench``, ``generate`` and ``serve`` use), so a number here is a number there.  For every
candidate and concurrency ``c``: the prompts are sent with at most ``c`` in flight, greedy, up to
``--max-tokens`` new tokens; completion tokens/s is over the wall time of the whole set; latency is
the p50 of one request.  For llamacpp the prompt tokens the server really computed (the rest came
from its prompt cache) are reported, which is how recomputation shows.

Candidates run one after the other (each loads its own model): ratios are fair on a quiet machine;
the JSON records the load average at each measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_io import percentile, print_table, write_results
from benchmarks.settings import BenchmarkSettings
from runtime.backends.base import Backend, CompletionRequest
from runtime.backends.factory import load_backend
from runtime.prompts import get_preset
from runtime.settings import RuntimeSettings

CANDIDATES: dict[str, tuple[str, RuntimeSettings]] = {
    "transformers": ("transformers", RuntimeSettings(dtype="float32")),
    "transformers-bf16": ("transformers", RuntimeSettings(dtype="bfloat16")),
    "llamacpp": ("llamacpp", RuntimeSettings()),
}


def gsm8k_prompts(backend: Backend, n: int) -> list[str]:
    path = BenchmarkSettings().resolve_data_dir() / "gsm8k" / "test.jsonl"
    with path.open() as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(n), f, strict=False)]
    presets = [get_preset("tir"), get_preset("tir-sft")]
    return [presets[i % 2].render(q, backend) for i, q in enumerate(questions)]


async def measure(backend: Backend, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(prompt: str) -> int:
        async with gate:
            started = time.perf_counter()
            done = await backend.complete(CompletionRequest(prompt=prompt, max_tokens=max_tokens))
            latencies.append(time.perf_counter() - started)
            return done.completion_tokens

    computed_before = getattr(backend, "prompt_tokens_computed", None)
    total_before = getattr(backend, "prompt_tokens_total", None)
    started = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
    wall = time.perf_counter() - started
    result: dict[str, Any] = {
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "load_avg": os.getloadavg()[0],
    }
    if computed_before is not None and total_before is not None:
        computed = backend.prompt_tokens_computed - computed_before  # type: ignore[attr-defined]
        total = backend.prompt_tokens_total - total_before  # type: ignore[attr-defined]
        result["prompt_tokens_computed"] = computed
        result["prompt_tokens_total"] = total
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.candidates.split(","):
        kind, runtime = CANDIDATES[name]
        loading = time.perf_counter()
        backend = await asyncio.to_thread(load_backend, kind, None, None, runtime)
        load_s = time.perf_counter() - loading
        try:
            prompts = gsm8k_prompts(backend, args.prompts)
            await measure(backend, prompts[:2], 2, 8)  # warm-up: first-call allocations, caches
            by_c = {}
            for c in (int(x) for x in args.concurrency.split(",")):
                by_c[str(c)] = await measure(backend, prompts[: max(c, args.min_prompts)], c, args.max_tokens)
                print(name, c, by_c[str(c)], flush=True)
            results[name] = {"load_s": round(load_s, 2), "by_concurrency": by_c}
        finally:
            await backend.aclose()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", default="transformers,transformers-bf16,llamacpp")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--prompts", type=int, default=64, help="GSM8K test questions (tir / tir-sft).")
    parser.add_argument("--min-prompts", type=int, default=8, help="At least this many requests per level.")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--out", default="runs/bench/generation.json")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    levels = args.concurrency.split(",")
    rows = [[name, *(r["by_concurrency"][c]["tokens_per_s"] for c in levels)] for name, r in results.items()]
    print_table("completion tokens/s by concurrency", ["candidate", *levels], rows)
    summary = {name: r["by_concurrency"][levels[-1]]["tokens_per_s"] for name, r in results.items()}
    settings = {k: getattr(args, k) for k in ("candidates", "concurrency", "prompts", "max_tokens")}
    write_results(Path(args.out), "generation", {"settings": settings, "candidates": results}, summary)


if __name__ == "__main__":
    main()
