"""CPU generation engines side by side: completion tokens/s by concurrency, on the same prompts.

    python -m benchmarks.generation_bench [--candidates generate,transformers,transformers-cb,llamacpp]
        [--concurrency 1,8,32,64] [--prompts 64] [--max-tokens 256] [--out FILE]

The prompts are GSM8K test questions rendered with the ``tir`` (few-shot) and ``tir-sft`` presets,
half each, always on the **base** default model (``adapter=none``), so the numbers stay comparable
as the default changes.  Candidates:

- ``generate``: plain batched ``model.generate`` on batches of ``c`` prompts, greedy, no stop
  strings: the reference a serving path should reach (bf16 where the CPU computes it natively,
  else fp32);
- ``transformers``: the transformers backend as ``solve``/``bench``/``serve`` run it;
- ``transformers-bf16``: the same in bf16 (emulated, and slower, on CPUs without native bf16);
- ``transformers-cb``: transformers' own continuous batching (``generate_batch``, paged attention);
- ``llamacpp``: the llamacpp backend (a ``llama-server`` child on the Q4_1 GGUF);
- ``llamacpp-spin``: the same with libgomp's own spin count (``MATHCODER_LLAMA_SPIN_COUNT=300000``)
  instead of the backend's short one: what the short spin costs on a quiet machine and saves on a
  loaded one;
- ``llama-batched-bench``: llama.cpp's own benchmark on the same file (256-token synthetic prompts,
  ``c`` sequences): the engine alone, the ceiling the backend is measured against;
- ``vllm``: the vLLM backend, on a GPU (``--candidates generate,transformers,vllm`` there, where
  ``generate`` and the transformers backend run on the GPU too, in bf16 with the static cache).

Backends are built through the runtime's one factory, so a number here is a number there.  For
each concurrency ``c`` every candidate in turn gets the same prompts (at most ``c`` in flight,
greedy, up to ``--max-tokens`` new tokens): interleaving puts them under the same load on these
shared machines.  Reported: completion tokens/s over the wall time of the set, p50 latency of one
request, p50 time to first token (every backend streams), and for llamacpp the
prompt tokens the server computed against those sent (the rest came from its prompt cache).
vLLM's CPU build is not a candidate (see ``docs/engines.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_io import percentile, print_table, write_results
from benchmarks.settings import BenchmarkSettings
from runtime.backends.base import Backend, Completion, CompletionRequest
from runtime.backends.factory import load_backend
from runtime.backends.llamacpp import (
    LlamaCppBackend,
    LlamaCppSettings,
    find_server_binary,
    server_environment,
)
from runtime.cpu import cpu_supports_bf16
from runtime.prompts import get_preset
from runtime.settings import RuntimeSettings


def base_settings(**overrides: Any) -> RuntimeSettings:
    """The base model, whatever adapter the package ships."""
    return RuntimeSettings.model_validate({"adapter": "none", **overrides})


def gsm8k_questions(n: int) -> list[str]:
    path = BenchmarkSettings().resolve_data_dir() / "gsm8k" / "test.jsonl"
    with path.open() as f:
        return [json.loads(line)["question"] for _, line in zip(range(n), f, strict=False)]


def render(backend: Backend, questions: list[str]) -> list[str]:
    presets = [get_preset("tir"), get_preset("tir-sft")]
    return [presets[i % 2].render(q, backend) for i, q in enumerate(questions)]


class BackendCandidate:
    """A runtime backend: requests through ``complete`` (or ``stream``, timing the first token)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def one(self, prompt: str, max_tokens: int) -> tuple[int, float | None]:
        request = CompletionRequest(prompt=prompt, max_tokens=max_tokens)
        started, first = time.perf_counter(), None
        async for item in self.backend.stream(request):
            if first is None:
                first = time.perf_counter() - started
            if isinstance(item, Completion):
                return item.completion_tokens, first
        raise RuntimeError("the stream ended without a completion")

    async def run(self, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []
        firsts: list[float] = []

        async def one(prompt: str) -> int:
            async with gate:
                started = time.perf_counter()
                tokens, first = await self.one(prompt, max_tokens)
                latencies.append(time.perf_counter() - started)
                if first is not None:
                    firsts.append(first)
                return tokens

        computed = getattr(self.backend, "prompt_tokens_computed", None)
        total = getattr(self.backend, "prompt_tokens_total", None)
        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
        result = _rates(tokens, time.perf_counter() - started, latencies)
        if firsts:
            result["ttft_p50_s"] = round(percentile(firsts, 50), 3)
        if computed is not None and total is not None:
            result["prompt_tokens_computed"] = self.backend.prompt_tokens_computed - computed  # type: ignore[attr-defined]
            result["prompt_tokens_total"] = self.backend.prompt_tokens_total - total  # type: ignore[attr-defined]
        return result

    async def close(self) -> None:
        await self.backend.aclose()


class ModelCandidate:
    """The transformers model called directly: ``generate`` on static batches, or ``generate_batch``."""

    def __init__(self, continuous: bool) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from runtime.model_store import ensure_hf_model

        folder = ensure_hf_model(RuntimeSettings())
        self.dtype = torch.bfloat16 if cpu_supports_bf16() else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype)
        self.model = model.train(False)  # inference mode for dropout and friends
        self.continuous = continuous

    def _generate(self, prompts: list[str], concurrency: int, max_tokens: int) -> tuple[int, list[float]]:
        import torch
        from transformers import GenerationConfig

        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        ids = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        with torch.inference_mode():
            if self.continuous:
                # One call with every prompt: the manager admits up to its batch size and refills.
                config.max_batch_tokens = concurrency * 256  # type: ignore[attr-defined]
                started = time.perf_counter()
                out = self.model.generate_batch(inputs=ids, generation_config=config, progress_bar=False)
                wall = time.perf_counter() - started
                return sum(len(r.generated_tokens) for r in out.values()), [wall]
            tokens, latencies = 0, []
            for i in range(0, len(ids), concurrency):
                batch = self.tokenizer.pad({"input_ids": ids[i : i + concurrency]}, return_tensors="pt")
                started = time.perf_counter()
                generated = self.model.generate(**batch, generation_config=config)
                latencies.append(time.perf_counter() - started)
                new = generated[:, batch["input_ids"].shape[1] :]
                tokens += int((new != self.tokenizer.pad_token_id).sum())
            return tokens, latencies

    async def run(self, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
        started = time.perf_counter()
        tokens, latencies = await asyncio.to_thread(self._generate, prompts, concurrency, max_tokens)
        return _rates(tokens, time.perf_counter() - started, latencies)

    async def close(self) -> None:
        return None


class RawLlamaCandidate:
    """llama.cpp's own ``llama-batched-bench`` on the same GGUF, threads and prompt length: the
    engine without the server, HTTP and the backend, so the backend's overhead shows."""

    def __init__(self) -> None:
        from runtime.model_store import ensure_default_model

        self.binary = find_server_binary(LlamaCppSettings()).with_name("llama-batched-bench")
        self.model = ensure_default_model(RuntimeSettings())
        self.prompt_tokens = 256

    async def run(self, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
        threads = str(len(os.sched_getaffinity(0)))
        args = [
            str(self.binary), "-m", str(self.model), "-c", str(concurrency * (self.prompt_tokens + max_tokens)),
            "-b", "512", "-ub", "512", "-npp", str(self.prompt_tokens), "-ntg", str(max_tokens),
            "-npl", str(concurrency), "-t", threads, "-tb", threads, "--output-format", "jsonl",
        ]  # fmt: skip
        env = server_environment(LlamaCppSettings())  # the engine as the backend runs it
        done = await asyncio.to_thread(
            subprocess.run, args, capture_output=True, text=True, check=True, env=env
        )
        row = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
        return {
            "completion_tokens": concurrency * max_tokens,
            "wall_s": round(float(row["t"]), 2),
            "tokens_per_s": round(float(row["speed_tg"]), 1),
            "prompt_tokens_per_s": round(float(row["speed_pp"]), 1),
            "prompt_tokens": self.prompt_tokens,
            "load_avg": round(os.getloadavg()[0], 2),
        }

    async def close(self) -> None:
        return None


def _rates(tokens: int, wall: float, latencies: list[float]) -> dict[str, Any]:
    return {
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "load_avg": round(os.getloadavg()[0], 2),
    }


def _backend(kind: str, **settings: Any) -> Callable[[], BackendCandidate]:
    return lambda: BackendCandidate(load_backend(kind, None, None, base_settings(**settings)))


def _spinning_llamacpp() -> BackendCandidate:
    spinning = LlamaCppSettings(spin_count=300_000)  # libgomp's own default
    return BackendCandidate(LlamaCppBackend.launch(None, base_settings(), settings=spinning))


CANDIDATES: dict[str, Callable[[], Any]] = {
    "generate": lambda: ModelCandidate(continuous=False),
    "transformers": _backend("transformers", dtype="float32"),
    "transformers-bf16": _backend("transformers", dtype="bfloat16"),
    "transformers-cb": lambda: ModelCandidate(continuous=True),
    "llamacpp": _backend("llamacpp"),
    "llamacpp-spin": _spinning_llamacpp,
    "llama-batched-bench": RawLlamaCandidate,
    "vllm": _backend("vllm"),  # on a GPU (the vllm extra)
}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [n.strip() for n in args.candidates.split(",")]
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; choose from {', '.join(CANDIDATES)}")
    questions = gsm8k_questions(args.prompts)
    loaded: dict[str, Any] = {}
    results: dict[str, Any] = {}
    try:
        for name in names:
            started = time.perf_counter()
            loaded[name] = await asyncio.to_thread(CANDIDATES[name])
            results[name] = {"load_s": round(time.perf_counter() - started, 2), "by_concurrency": {}}
        # The prompts rendered once, by a backend that has a chat template (they are all the same model).
        renderer = next((c.backend for c in loaded.values() if isinstance(c, BackendCandidate)), None)
        if renderer is None:
            renderer = load_backend("transformers", None, None, base_settings())
        prompts = render(renderer, questions)
        for candidate in loaded.values():  # warm-up: first-call allocations, caches
            if not isinstance(candidate, RawLlamaCandidate):
                await candidate.run(prompts[:2], 2, 8)
        for c in (int(x) for x in args.concurrency.split(",")):
            subset = prompts[: max(c, args.min_prompts)]
            for name, candidate in loaded.items():
                measured = await candidate.run(subset, c, args.max_tokens)
                results[name]["by_concurrency"][str(c)] = measured
                print(name, c, measured, flush=True)
    finally:
        for candidate in loaded.values():
            await candidate.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = "generate,transformers,transformers-cb,llamacpp"
    parser.add_argument(
        "--candidates", default=default + (",transformers-bf16" if cpu_supports_bf16() else "")
    )
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--prompts", type=int, default=64, help="GSM8K test questions (tir / tir-sft).")
    parser.add_argument("--min-prompts", type=int, default=8, help="At least this many requests per level.")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--out", default="runs/bench/generation.json")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    levels = args.concurrency.split(",")
    rows = []
    for name, r in results.items():
        by_c = r["by_concurrency"]
        single = by_c.get(levels[0], {})
        rows.append(
            [
                name,
                *(by_c[c]["tokens_per_s"] for c in levels),
                single.get("ttft_p50_s", "-"),
                f"{r['load_s']:.1f}",
            ]
        )
    print_table(
        f"completion tokens/s by concurrency ({args.max_tokens} new tokens at most, base model)",
        ["candidate", *levels, f"ttft p50 s (c={levels[0]})", "load s"],
        rows,
    )
    summary = {name: r["by_concurrency"][levels[-1]]["tokens_per_s"] for name, r in results.items()}
    settings = {k: getattr(args, k) for k in ("candidates", "concurrency", "prompts", "max_tokens")}
    settings["cpu_native_bf16"] = cpu_supports_bf16()
    write_results(Path(args.out), "generation", {"settings": settings, "candidates": results}, summary)


if __name__ == "__main__":
    main()
