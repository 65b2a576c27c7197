"""Streaming latency: time to first token and the gaps between tokens, through every client.

    python -m benchmarks.streaming_bench [--problems 8] [--max-tokens 64]
        [--out runs/bench/streaming.json]

The base default model (no adapter, so numbers stay comparable as the default changes) on the
llama.cpp engine, greedy, the ``tir`` prompt, at most ``--max-tokens`` tokens and no cells
(``max_rounds`` 0: this measures the stream, not the sandbox).  Five paths, in turn, ``--problems``
rounds, so the machine's noise falls on all alike.  Each round asks three GSM8K test questions no
request asked before, so every request pays the prefill of its question (the few-shot prefix is
cached) and none is favoured by another's prompt cache; pairs that run on different engine
processes share a question, so their difference is the layers between them, not the question's
length: ``loop`` and ``sse`` (the server's cost), ``backend`` and ``sdk``:

- ``backend``: ``LlamaCppBackend.stream`` in this process (the engine's own stream);
- ``loop``: ``run_trajectory`` on that backend, its ``TextDelta`` events;
- ``sse``: ``POST /v1/solve`` with ``stream: true`` to ``mathcoder serve`` (a separate process with
  its own llama-server and a warm pool), its ``text`` events read by httpx;
- ``sdk``: ``/v1/chat/completions`` with ``stream=True`` through the ``openai`` SDK, content chunks;
- ``cli``: ``mathcoder solve --backend openai`` against this process's llama-server, the bytes on its
  stdout; its first token counts from the process start, so it includes Python's start, the imports
  and the pool (reported apart, not comparable to the others).

Reported per path: p50/p99 time to first token (from the request) and p50/p99 inter-token gap (the
gaps between consecutive pieces after the first).  Prints a table, writes the JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from benchmarks.bench_io import percentile, print_table, write_results
from benchmarks.datasets import load_problems
from benchmarks.server_load import wait_ready
from runtime.backends.base import CompletionRequest
from runtime.backends.llamacpp import LlamaCppBackend
from runtime.events import TextDelta
from runtime.loop import LoopLimits, run_trajectory
from runtime.prompts import get_preset
from runtime.settings import RuntimeSettings
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

API_KEY = "sk-streaming-bench-0123456789"
PATHS = ("backend", "loop", "sse", "sdk", "cli")
MATHCODER = str(Path(sys.executable).parent / "mathcoder")


class Clock:
    """Arrival times of one request's pieces, from its start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.arrivals: list[float] = []

    def piece(self) -> None:
        self.arrivals.append(time.perf_counter() - self.started)

    def sample(self) -> dict[str, Any]:
        gaps = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]
        first = self.arrivals[0] if self.arrivals else float("nan")
        return {"first_s": first, "gaps_s": gaps, "pieces": len(self.arrivals)}


async def via_backend(backend: LlamaCppBackend, prompt: str, max_tokens: int) -> dict[str, Any]:
    clock = Clock()
    async for item in backend.stream(CompletionRequest(prompt=prompt, max_tokens=max_tokens)):
        if isinstance(item, str):
            clock.piece()
    return clock.sample()


async def via_loop(
    backend: LlamaCppBackend, pool: KernelPool, problem: str, max_tokens: int
) -> dict[str, Any]:
    clock = Clock()
    limits = LoopLimits(max_rounds=0, max_tokens=max_tokens)
    async for event in run_trajectory(
        problem, backend=backend, sessions=pool.session, preset=get_preset("tir"), limits=limits
    ):
        if isinstance(event, TextDelta):
            clock.piece()
    return clock.sample()


async def via_sse(client: httpx.AsyncClient, problem: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "problem": problem,
        "stream": True,
        "preset": "tir",
        "limits": {"max_rounds": 0, "max_tokens": max_tokens},
    }
    clock = Clock()
    async with aconnect_sse(client, "POST", "/v1/solve", json=body) as source:
        async for sse in source.aiter_sse():
            if sse.event == "text":
                clock.piece()
    return clock.sample()


async def via_sdk(url: str, problem: str, max_tokens: int) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=600)
    clock = Clock()
    stream = await client.chat.completions.create(
        model="mathcoder",
        messages=[{"role": "user", "content": problem}],
        stream=True,
        extra_body={"preset": "tir", "limits": {"max_rounds": 0}},
        max_tokens=max_tokens,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            clock.piece()
    await client.close()
    return clock.sample()


async def via_cli(llama_url: str, problem: str, max_tokens: int, env: dict[str, str]) -> dict[str, Any]:
    command = [MATHCODER, "solve", problem, "--backend", "openai", "--base-url", f"{llama_url}/v1"]
    command += ["--model", "base", "--preset", "tir", "--max-rounds", "0", "--max-tokens", str(max_tokens)]
    clock = Clock()
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env
    )
    assert proc.stdout is not None
    while await proc.stdout.read(4096):
        clock.piece()
    await proc.wait()
    return clock.sample()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def server(port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    command = [MATHCODER, "serve", "--port", str(port), "--backend", "llamacpp", "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def solve_client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        yield client


def paired_p50(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """The median difference of first-token times, request by request."""
    return percentile([x["first_s"] - y["first_s"] for x, y in zip(a, b, strict=True)], 50)


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [s["first_s"] for s in samples]
    gaps = [g for s in samples for g in s["gaps_s"]]
    return {
        "requests": len(samples),
        "first_p50_s": percentile(firsts, 50),
        "first_p99_s": percentile(firsts, 99),
        "gap_p50_s": percentile(gaps, 50),
        "gap_p99_s": percentile(gaps, 99),
        "pieces_per_request": sum(s["pieces"] for s in samples) / max(1, len(samples)),
    }


async def main(args: argparse.Namespace) -> None:
    questions = [p.question for p in load_problems("gsm8k", "test", limit=args.problems * 3 + 1)]
    runtime = RuntimeSettings(adapter="none")
    env = {
        **os.environ,
        "MATHCODER_ADAPTER": "none",
        "MATHCODER_SERVER_API_KEYS": f"{API_KEY} solve bench",
        "MATHCODER_SANDBOX_POOL_SIZE": "1",
    }
    backend = await asyncio.to_thread(LlamaCppBackend.launch, None, runtime)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    samples: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    try:
        with server(port, env) as proc:
            async with KernelPool(SandboxSettings().model_copy(update={"pool_size": 1})) as pool:
                await wait_ready(url, proc, 300)
                async with solve_client(url) as client:
                    preset = get_preset("tir")
                    warm = questions.pop()  # both engines hold the few-shot prefix, as in use
                    await via_sse(client, warm, 4)
                    await via_backend(backend, preset.render(warm, backend), 4)
                    fresh = iter(questions)
                    for _ in range(args.problems):
                        # loop and backend share this process's llama-server; sse and sdk the server's.
                        q_server, q_engine, q_cli = next(fresh), next(fresh), next(fresh)
                        prompt = preset.render(q_engine, backend)
                        samples["backend"].append(await via_backend(backend, prompt, args.max_tokens))
                        samples["loop"].append(await via_loop(backend, pool, q_server, args.max_tokens))
                        samples["sse"].append(await via_sse(client, q_server, args.max_tokens))
                        samples["sdk"].append(await via_sdk(url, q_engine, args.max_tokens))
                        samples["cli"].append(await via_cli(backend.base_url, q_cli, args.max_tokens, env))
    finally:
        await backend.aclose()
    results = {path: summarise(samples[path]) for path in PATHS}
    rows = [
        [
            path,
            r["requests"],
            r["first_p50_s"] * 1000,
            r["first_p99_s"] * 1000,
            r["gap_p50_s"] * 1000,
            r["gap_p99_s"] * 1000,
        ]
        for path, r in results.items()
    ]
    print_table(
        "Streaming: first token and inter-token gaps (ms), base model on llama.cpp",
        ["path", "requests", "first p50", "first p99", "gap p50", "gap p99"],
        rows,
    )
    backend_row, sse_row = results["backend"], results["sse"]
    summary = {
        "first_token_p50_s": {path: r["first_p50_s"] for path, r in results.items()},
        # Paired by question: the same prompt, each on its own engine process.
        "server_adds_first_token_p50_ms": 1000 * paired_p50(samples["sse"], samples["loop"]),
        "sdk_minus_backend_first_token_p50_ms": 1000 * paired_p50(samples["sdk"], samples["backend"]),
        "gap_p99_ratio_sse_to_backend": sse_row["gap_p99_s"] / backend_row["gap_p99_s"],
        "gap_p99_ratio_sdk_to_backend": results["sdk"]["gap_p99_s"] / backend_row["gap_p99_s"],
    }
    settings = {"problems": args.problems, "max_tokens": args.max_tokens, "preset": "tir", "adapter": "none"}
    write_results(
        args.out, "streaming", {"settings": settings, "paths": results, "samples": samples}, summary
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", type=int, default=8, help="Rounds: requests per path.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/streaming.json"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
