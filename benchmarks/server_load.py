"""Server load test: concurrent streaming clients on loopback, and the server's own overhead.

    python -m benchmarks.server_load [--clients 64] [--requests 4] [--model-clients 8]
        [--model-max-tokens 32] [--skip-model] [--out runs/bench/server_load.json]

The server runs as a separate process (``mathcoder serve``'s app under uvicorn, started by this
script with ``--serve``) so that clients and server do not share a GIL.  Two workloads, each
measured through the server and by calling ``run_trajectory`` directly in this process, side by
side in one run:

1. scripted: a stateless scripted model (three steps, ``--step-delay-ms`` each, no code cells
   unless ``--cells``), ``--clients`` concurrent clients each streaming ``--requests`` trajectories
   from ``/v1/solve``; then ``--sequential`` requests one at a time, where the difference between
   the server's and the direct p50 is the server's overhead per request (HTTP, auth, admission,
   JSON, SSE) undisturbed by queueing;
2. default model: the embedded SmolLM2-135M with real kernels, ``--model-clients`` concurrent
   streaming clients, ``--model-max-tokens`` tokens each.

Reported: p50/p99 time to first event and to completion, errors (a non-200, a stream without its
``done`` event, or ``done.ok`` false), and the server's RSS before and after the load.  Prints a
table, writes the JSON document (``--out``), per-request samples beside it (``.samples.jsonl``),
and a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from benchmarks.bench_io import percentile, print_table, write_results
from runtime.backends.base import Backend, Completion, CompletionRequest
from runtime.backends.scripted import ChatMLWords
from runtime.events import ErrorEvent, FinalAnswer
from runtime.loop import LoopLimits, run_trajectory
from runtime.prompts import get_preset
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

API_KEY = "sk-load-test-0123456789abcdef"
STEP_MARK = "[step]"


class LoadScript(ChatMLWords):
    """A stateless scripted model: step k of any problem is known from the marks already written."""

    name = "scripted-load"

    def __init__(self, step_delay_s: float, cells: int) -> None:
        self.step_delay_s = step_delay_s
        self.cells = cells

    async def complete(self, request: CompletionRequest) -> Completion:
        turn = request.prompt.rpartition("<|im_start|>assistant\n")[2]
        step = turn.count(STEP_MARK)
        if self.step_delay_s:
            await asyncio.sleep(self.step_delay_s)  # what a model would take to write the step
        if step < self.cells:
            text = f"{STEP_MARK} Compute part {step}.\n```python\nprint({step} * 7)\n```\n"
            at = text.index("\n```\n", text.index("```python"))
            return Completion(text=text[:at], finish_reason="stop", stop="\n```\n", completion_tokens=12)
        if step < self.cells + 2:
            return Completion(
                text=f"{STEP_MARK} Thinking, step {step}. ", finish_reason="length", completion_tokens=6
            )
        return Completion(
            text=f"{STEP_MARK} So the answer is \\boxed{{42}}.", finish_reason="eos", completion_tokens=8
        )


@dataclass
class Sample:
    workload: str
    path: str  # server or direct
    phase: str  # concurrent or sequential
    ok: bool
    first_event_s: float
    total_s: float
    events: int
    error: str | None = None


# -- the server process -----------------------------------------------------------------------------
def sandbox_settings(uid_base: int, name: str, cells: bool) -> SandboxSettings:
    base = SandboxSettings()
    return base.model_copy(
        update={
            "pool_size": 2 if cells else 0,
            "max_kernels": 8,
            "uid_base": uid_base,
            "run_dir": base.run_dir / "bench-server" / name,
        }
    )


def make_backend(kind: str, args: argparse.Namespace) -> Backend:
    if kind == "scripted":
        return LoadScript(args.step_delay_ms / 1000, args.cells)
    import torch

    from runtime.backends.transformers_backend import TransformersBackend
    from runtime.settings import RuntimeSettings

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    return TransformersBackend.load(None, RuntimeSettings(), device="cpu")


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from runtime.server import ServerSettings, create_app
    from runtime.server.logs import configure_logging

    configure_logging("warning")
    settings = ServerSettings(
        api_keys=f"{API_KEY} solve load",
        max_running=256,
        max_queued=1024,
        per_key_concurrency=1024,
        max_tokens=4096,
        max_rounds=8,
        keepalive_s=15.0,
        default_wall_time_s=args.wall_time_s,
        max_wall_time_s=args.wall_time_s,
    )
    cells = args.serve == "default" or args.cells > 0
    pool = KernelPool(sandbox_settings(args.uid_base, f"server-{args.serve}", cells))
    app = create_app(settings, backend=make_backend(args.serve, args), pool=pool)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False, ws="none")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def server_process(kind: str, args: argparse.Namespace, port: int) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "benchmarks.server_load", "--serve", kind, "--port", str(port)]
    command += [
        "--uid-base",
        str(args.uid_base),
        "--step-delay-ms",
        str(args.step_delay_ms),
        "--cells",
        str(args.cells),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()  # SIGTERM: the server drains and shuts its pool down
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll /readyz (a benchmark may poll; the tests wait on events)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the server was not ready within {timeout_s} s")


# -- clients ------------------------------------------------------------------------------------------
async def stream_one(
    client: httpx.AsyncClient, problem: str, limits: dict[str, int], workload: str, phase: str
) -> Sample:
    started = time.perf_counter()
    first: float | None = None
    events = 0
    ok, error = False, None
    try:
        body = {"problem": problem, "stream": True, "limits": limits}
        async with aconnect_sse(client, "POST", "/v1/solve", json=body) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                error = f"HTTP {source.response.status_code}: {source.response.text[:200]}"
            else:
                async for sse in source.aiter_sse():
                    events += 1
                    if first is None:
                        first = time.perf_counter() - started
                    if sse.event == "done":
                        ok = bool(json.loads(sse.data)["ok"])
                        error = None if ok else "done.ok is false"
                if events == 0 or (error is None and not ok):
                    error = error or "the stream ended without its done event"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    total = time.perf_counter() - started
    return Sample(workload, "server", phase, ok, first if first is not None else total, total, events, error)


async def direct_one(
    backend: Backend, pool: KernelPool, problem: str, limits: LoopLimits, workload: str, phase: str
) -> Sample:
    started = time.perf_counter()
    first: float | None = None
    events = 0
    ok, error = False, None
    async for event in run_trajectory(
        problem, backend=backend, sessions=pool.session, preset=get_preset("tir"), limits=limits
    ):
        events += 1
        if first is None:
            first = time.perf_counter() - started
        if isinstance(event, FinalAnswer):
            ok = True
        elif isinstance(event, ErrorEvent):
            error = event.message
    total = time.perf_counter() - started
    return Sample(workload, "direct", phase, ok, first if first is not None else total, total, events, error)


async def concurrently(clients: int, requests: int, one: Any) -> list[Sample]:
    async def worker(w: int) -> list[Sample]:
        return [await one(f"Problem {w}-{r}: what is 6 times 7?") for r in range(requests)]

    return [s for batch in await asyncio.gather(*(worker(w) for w in range(clients))) for s in batch]


@contextlib.asynccontextmanager
async def http_client(url: str, connections: int) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=600) as client:
        yield client


async def workload(kind: str, args: argparse.Namespace, port: int) -> tuple[list[Sample], dict[str, float]]:
    scripted = kind == "scripted"
    clients = args.clients if scripted else args.model_clients
    requests = args.requests if scripted else args.model_requests
    tokens = 4096 if scripted else args.model_max_tokens
    limits = {"max_tokens": tokens, "max_rounds": args.cells if scripted else 2}
    url = f"http://127.0.0.1:{port}"
    samples: list[Sample] = []
    memory: dict[str, float] = {}
    print(f"[{kind}] starting the server", file=sys.stderr)
    with server_process(kind, args, port) as proc:
        await wait_ready(url, proc, 600)
        async with http_client(url, clients + 4) as client:
            # Warm-up (first requests pay imports, lazy batcher start, first kernel leases).
            await concurrently(min(clients, 4), 1, lambda p: stream_one(client, p, limits, kind, "warmup"))
            memory["rss_before_mb"] = rss_mb(proc.pid)
            print(f"[{kind}] {clients} clients x {requests} requests through the server", file=sys.stderr)
            t0, server_cpu, client_cpu = time.perf_counter(), cpu_s(proc.pid), cpu_s(os.getpid())
            samples += await concurrently(
                clients, requests, lambda p: stream_one(client, p, limits, kind, "concurrent")
            )
            memory["server_wall_s"] = time.perf_counter() - t0
            memory["server_cpu_s"] = cpu_s(proc.pid) - server_cpu
            memory["client_cpu_s"] = cpu_s(os.getpid()) - client_cpu
            memory["rss_after_mb"] = rss_mb(proc.pid)
            if scripted:
                for i in range(args.sequential):
                    samples.append(
                        await stream_one(client, f"Sequential {i}: 6 times 7?", limits, kind, "sequential")
                    )
    print(f"[{kind}] the same through run_trajectory directly", file=sys.stderr)
    backend = make_backend(kind, args)
    loop_limits = LoopLimits(
        max_tokens=tokens,
        max_rounds=limits["max_rounds"],
        step_tokens=min(512, tokens),
        wall_time_s=args.wall_time_s,
    )
    name = f"direct-{kind}"
    try:
        async with KernelPool(
            sandbox_settings(args.uid_base + 100, name, not scripted or args.cells > 0)
        ) as pool:
            await concurrently(
                min(clients, 4), 1, lambda p: direct_one(backend, pool, p, loop_limits, kind, "warmup")
            )
            t0, direct_cpu = time.perf_counter(), cpu_s(os.getpid())
            samples += await concurrently(
                clients, requests, lambda p: direct_one(backend, pool, p, loop_limits, kind, "concurrent")
            )
            memory["direct_wall_s"] = time.perf_counter() - t0
            memory["direct_cpu_s"] = cpu_s(os.getpid()) - direct_cpu
            if scripted:
                for i in range(args.sequential):
                    samples.append(
                        await direct_one(
                            backend, pool, f"Sequential {i}: 6 times 7?", loop_limits, kind, "sequential"
                        )
                    )
    finally:
        await backend.aclose()
    return samples, memory


def summarise(samples: list[Sample], kind: str, phase: str, path: str) -> dict[str, Any]:
    chosen = [s for s in samples if (s.workload, s.phase, s.path) == (kind, phase, path)]
    good = [s for s in chosen if s.ok]
    ms = 1000.0
    return {
        "requests": len(chosen),
        "errors": len(chosen) - len(good),
        "first_event_p50_ms": percentile([s.first_event_s for s in good], 50) * ms,
        "first_event_p99_ms": percentile([s.first_event_s for s in good], 99) * ms,
        "total_p50_ms": percentile([s.total_s for s in good], 50) * ms,
        "total_p99_ms": percentile([s.total_s for s in good], 99) * ms,
    }


def scripted_summary(scripted: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    def p50(key: str) -> float:
        value: float = scripted[key]["total_p50_ms"]
        return value

    server, cpu = scripted["concurrent_server"], scripted["memory"]
    n = server["requests"]
    return {
        "scripted_clients": args.clients,
        "scripted_errors": server["errors"],
        "scripted_first_event_p50_ms": round(server["first_event_p50_ms"], 2),
        "scripted_first_event_p99_ms": round(server["first_event_p99_ms"], 2),
        "scripted_total_p50_ms": round(server["total_p50_ms"], 2),
        "scripted_total_p99_ms": round(server["total_p99_ms"], 2),
        "overhead_p50_ms_sequential": round(p50("sequential_server") - p50("sequential_direct"), 2),
        "overhead_p50_ms_concurrent": round(p50("concurrent_server") - p50("concurrent_direct"), 2),
        # The server's own CPU per request against the direct loop's: what a request costs the
        # server whatever else competes for the CPU (the latencies include that competition).
        "server_cpu_ms_per_request": round(cpu["server_cpu_s"] / n * 1000, 2),
        "direct_cpu_ms_per_trajectory": round(cpu["direct_cpu_s"] / n * 1000, 2),
        "client_cpu_ms_per_request": round(cpu["client_cpu_s"] / n * 1000, 2),
        "scripted_rss_mb": [round(cpu["rss_before_mb"], 1), round(cpu["rss_after_mb"], 1)],
    }


async def main(args: argparse.Namespace) -> None:
    port = args.port
    samples: list[Sample] = []
    results: dict[str, Any] = {"args": vars(args)}
    kinds = [k for k in args.workloads.split(",") if k and not (k == "default" and args.skip_model)]
    for offset, kind in enumerate(kinds):
        got, memory = await workload(kind, args, port + offset)
        samples += got
        results[kind] = {"memory": memory}
        for phase in ("concurrent", "sequential"):
            for path in ("server", "direct"):
                if any((s.workload, s.phase, s.path) == (kind, phase, path) for s in got):
                    results[kind][f"{phase}_{path}"] = summarise(got, kind, phase, path)
    rows = []
    for kind in kinds:
        for key, stats in results[kind].items():
            if key == "memory":
                continue
            rows.append(
                [
                    kind,
                    key,
                    stats["requests"],
                    stats["errors"],
                    stats["first_event_p50_ms"],
                    stats["first_event_p99_ms"],
                    stats["total_p50_ms"],
                    stats["total_p99_ms"],
                ]
            )
    print_table(
        "Server load (ms)",
        ["workload", "phase/path", "requests", "errors", "first p50", "first p99", "total p50", "total p99"],
        rows,
    )
    memory_rows = [
        [
            kind,
            results[kind]["memory"].get("rss_before_mb", float("nan")),
            results[kind]["memory"].get("rss_after_mb", float("nan")),
        ]
        for kind in kinds
    ]
    print_table("Server RSS (MB)", ["workload", "before load", "after load"], memory_rows)
    cpu_rows = [
        [
            kind,
            results[kind]["memory"]["server_cpu_s"],
            results[kind]["memory"]["client_cpu_s"],
            results[kind]["memory"]["direct_cpu_s"],
            results[kind]["memory"]["server_wall_s"],
            results[kind]["memory"]["direct_wall_s"],
        ]
        for kind in kinds
    ]
    print_table(
        "Concurrent phase: CPU and wall seconds",
        ["workload", "server CPU", "client CPU", "direct CPU", "server wall", "direct wall"],
        cpu_rows,
    )
    summary: dict[str, Any] = {}
    if "scripted" in results:
        summary |= scripted_summary(results["scripted"], args)
    if "default" in results:
        default = results["default"]
        summary |= {
            "model_clients": args.model_clients,
            "model_errors": default["concurrent_server"]["errors"],
            "model_first_event_p50_ms": round(default["concurrent_server"]["first_event_p50_ms"], 1),
            "model_total_p50_ms": round(default["concurrent_server"]["total_p50_ms"], 1),
            "model_total_p99_ms": round(default["concurrent_server"]["total_p99_ms"], 1),
            "model_direct_total_p50_ms": round(default["concurrent_direct"]["total_p50_ms"], 1),
            "model_rss_mb": [
                round(default["memory"]["rss_before_mb"], 1),
                round(default["memory"]["rss_after_mb"], 1),
            ],
        }
    out = Path(args.out)
    write_results(out, "server_load", results, summary)
    with out.with_suffix(".samples.jsonl").open("w") as f:
        for sample in samples:
            f.write(json.dumps(asdict(sample)) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64, help="Concurrent streaming clients (scripted).")
    parser.add_argument("--requests", type=int, default=4, help="Trajectories each scripted client streams.")
    parser.add_argument(
        "--sequential", type=int, default=100, help="One-at-a-time requests for the overhead."
    )
    parser.add_argument("--step-delay-ms", type=float, default=20.0, help="Scripted model time per step.")
    parser.add_argument(
        "--cells", type=int, default=0, help="Code cells per scripted trajectory (real kernels)."
    )
    parser.add_argument(
        "--model-clients", type=int, default=8, help="Concurrent clients on the default model."
    )
    parser.add_argument(
        "--model-requests", type=int, default=1, help="Trajectories each model client streams."
    )
    parser.add_argument("--model-max-tokens", type=int, default=32, help="Token budget per model trajectory.")
    parser.add_argument("--skip-model", action="store_true", help="Only the scripted workload.")
    parser.add_argument(
        "--workloads", default="scripted,default", help="Comma-separated: scripted, default (the model)."
    )
    parser.add_argument("--wall-time-s", type=float, default=900.0, help="Trajectory wall-time budget.")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 on a shared CPU.",
    )
    parser.add_argument("--port", type=int, default=18700, help="Loopback port (the model server uses +1).")
    parser.add_argument("--uid-base", type=int, default=68300, help="Kernel uids: server here, direct +100.")
    parser.add_argument("--out", default="runs/bench/server_load.json")
    parser.add_argument("--serve", choices=["scripted", "default"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        serve(arguments)
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if arguments.torch_threads:
            # Through the environment, before torch loads, so that it holds in every thread (and in
            # the server process): torch.set_num_threads in the main thread does not reach the
            # backend's generate thread under OpenMP, and two spinning threads on a shared
            # 2-core CPU cost several times the CPU of one.
            os.environ["OMP_NUM_THREADS"] = str(arguments.torch_threads)
        asyncio.run(main(arguments))
