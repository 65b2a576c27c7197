"""Runtime benchmark: backend throughput, end-to-end throughput with tools, async vs synchronous rounds.

    python -m benchmarks.runtime_bench [--limit 64] [--concurrency 64] [--max-tokens 384] [--out FILE]

Written for the GPU machine (``benchmarks/gpu/runtime_bench.sh`` runs it there) and runnable on a
CPU with small numbers.  On GSM8K test problems with the TIR prompt (few-shot, so the model writes
code), side by side in one run:

1. raw backend throughput: generated tokens/s for a batch of prompts with no tool calls, through the
   runtime's backend and through plain ``model.generate`` with the default dynamic cache;
2. end-to-end throughput of the agent loop with tools, as a fraction of (1);
3. the asynchronous scheduler versus synchronous rounds (everyone generates, then everyone
   executes) on the same problems and backend: problems/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

from benchmarks.bench_io import print_table, write_results
from benchmarks.settings import BenchmarkSettings
from runtime.backends.base import Backend, Completion, CompletionRequest
from runtime.events import ErrorEvent, FinalAnswer
from runtime.loop import CellRunner, LoopLimits, SessionFactory, solve
from runtime.prompts import get_preset
from runtime.scheduler import RoundsBarrier, solve_all
from runtime.settings import RuntimeSettings
from sandbox.pool import KernelPool
from sandbox.result import ExecutionResult
from sandbox.settings import SandboxSettings


def load_problems(limit: int) -> list[dict[str, Any]]:
    path = BenchmarkSettings().resolve_data_dir() / "gsm8k" / "test.jsonl"
    with path.open() as f:
        return [json.loads(line) for _, line in zip(range(limit), f, strict=False)]


async def raw_throughput(backend: Backend, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    outs = await asyncio.gather(
        *(backend.complete(CompletionRequest(prompt=p, max_tokens=max_tokens)) for p in prompts)
    )
    elapsed = time.perf_counter() - t0
    tokens = sum(o.completion_tokens for o in outs)
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def plain_generate_throughput(backend: Any, prompts: list[str], max_tokens: int) -> dict[str, Any] | None:
    """``model.generate`` with the default dynamic cache, one batch (transformers backend only)."""
    model, tokenizer = getattr(backend, "model", None), getattr(backend, "tokenizer", None)
    if model is None or tokenizer is None:
        return None
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_tokens, do_sample=False, min_new_tokens=max_tokens)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens = int((out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0])
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


class _RoundsBackend:
    """A backend whose calls wait for the generation phase of a ``RoundsBarrier``."""

    def __init__(self, inner: Backend, barrier: RoundsBarrier) -> None:
        self.inner, self.barrier, self.name = inner, barrier, inner.name

    async def complete(self, request: CompletionRequest) -> Completion:
        await self.barrier.phase("generate")
        return await self.inner.complete(request)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        await self.barrier.phase("generate")
        async with aclosing(self.inner.stream(request)) as items:
            async for item in items:
                yield item

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.inner.render_chat(messages)

    async def aclose(self) -> None:
        return None


class _RoundsSession:
    def __init__(self, inner: CellRunner, barrier: RoundsBarrier) -> None:
        self.inner, self.barrier = inner, barrier

    async def execute(self, code: str, timeout_s: float | None = None) -> ExecutionResult:
        await self.barrier.phase("execute")
        return await self.inner.execute(code, timeout_s)


async def end_to_end(
    backend: Backend, pool: KernelPool, problems: list[dict[str, Any]], limits: LoopLimits, *, rounds: bool
) -> dict[str, Any]:
    preset = get_preset("tir")
    barrier = RoundsBarrier(live=len(problems)) if rounds else None
    model: Backend = _RoundsBackend(backend, barrier) if barrier else backend

    def sessions_for() -> SessionFactory:
        if barrier is None:
            return pool.session

        @asynccontextmanager
        async def wrapped() -> AsyncIterator[CellRunner]:
            async with pool.session() as s:
                yield _RoundsSession(s, barrier)

        return wrapped

    async def one(_i: int, question: str) -> FinalAnswer | ErrorEvent:
        try:
            return await solve(question, backend=model, sessions=sessions_for(), preset=preset, limits=limits)
        finally:
            if barrier is not None:
                barrier.leave()

    t0 = time.perf_counter()
    finals = [
        r async for _, r in solve_all([p["question"] for p in problems], one, concurrency=len(problems))
    ]
    elapsed = time.perf_counter() - t0
    traces = [f.trace for f in finals if f.trace is not None]
    tokens = sum(t.metadata.usage.completion_tokens for t in traces)
    cells = sum(t.metadata.usage.cells for t in traces)
    return {
        "problems": len(problems),
        "seconds": elapsed,
        "problems_per_s": len(problems) / elapsed,
        "tokens_per_s": tokens / elapsed,
        "cells_per_problem": cells / max(len(problems), 1),
        "errors": sum(isinstance(f, ErrorEvent) for f in finals),
    }


async def main(args: argparse.Namespace) -> None:
    from runtime.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend.load(args.model, RuntimeSettings())
    problems = load_problems(args.limit)
    preset = get_preset("tir")
    prompts = [preset.render(p["question"], backend) for p in problems]
    limits = LoopLimits(max_tokens=args.max_tokens, max_rounds=6)
    results: dict[str, Any] = {"raw": await raw_throughput(backend, prompts, args.raw_tokens)}
    results["plain_generate"] = plain_generate_throughput(backend, prompts, args.raw_tokens)
    sandbox = SandboxSettings(pool_size=min(args.limit, 16), max_kernels=max(args.limit, 2))
    async with KernelPool(sandbox) as pool:
        results["async"] = await end_to_end(backend, pool, problems, limits, rounds=False)
        results["rounds"] = await end_to_end(backend, pool, problems, limits, rounds=True)
    await backend.aclose()
    plain = results["plain_generate"]
    print_table(
        f"raw generation, batch {len(prompts)} x {args.raw_tokens} tokens",
        ["path", "tokens/s"],
        [("runtime backend", results["raw"]["tokens_per_s"])]
        + ([("model.generate, dynamic cache", plain["tokens_per_s"])] if plain else []),
    )
    print_table(
        f"agent loop with tools, {len(problems)} GSM8K problems",
        ["schedule", "problems/s", "tokens/s", "cells/problem", "errors"],
        [
            (name, r["problems_per_s"], r["tokens_per_s"], r["cells_per_problem"], r["errors"])
            for name, r in (("async", results["async"]), ("sync rounds", results["rounds"]))
        ],
    )
    summary = {
        "raw_tokens_per_s": round(results["raw"]["tokens_per_s"], 1),
        "plain_generate_tokens_per_s": round(plain["tokens_per_s"], 1) if plain else None,
        "e2e_fraction_of_raw": round(results["async"]["tokens_per_s"] / results["raw"]["tokens_per_s"], 3),
        "async_vs_rounds": round(results["async"]["problems_per_s"] / results["rounds"]["problems_per_s"], 3),
    }
    write_results(Path(args.out), "runtime", results, summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="Model path or id (default: the embedded SmolLM2-135M)."
    )
    parser.add_argument("--limit", type=int, default=64, help="GSM8K test problems (and raw batch size).")
    parser.add_argument("--max-tokens", type=int, default=384, help="Token budget per trajectory.")
    parser.add_argument("--raw-tokens", type=int, default=128, help="Tokens per sequence in the raw test.")
    parser.add_argument("--out", default="runs/bench/runtime.json")
    asyncio.run(main(parser.parse_args()))
