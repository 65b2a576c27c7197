"""Sandbox benchmark: kernel start (cold vs forked), round-trip latency, leases, stateful vs stateless, throughput.

    python -m benchmarks.sandbox_bench [--out runs/bench/sandbox.json] [--quick] [--only start]

Measures, on this machine, with every isolation layer on (bubblewrap, own uid, rlimits, cgroups),
side by side in the same run with ``isolation=none`` and with bare jupyter_client + ipykernel:

0. kernel start, cold (a new process per kernel) vs forked (``sandbox.zygote``), interleaved: from
   the lease request on an empty pool to the ``kernel_info_reply``, wall and CPU time (the host
   process, the zygote's fork and every process and thread of the kernel, from schedstat), p50 and
   p99, and the forked start's steps; start + ``print(1)`` + close cycles per second with two
   workers; the warm ``print(1+1)`` round trip of each;
1. warm round trip of ``print(1+1)`` in a leased kernel: p50 and p99;
2. lease time from a warm pool, and cold kernel start;
3. an 8-cell trajectory (sympy imported in cell 1, small computations after) in one stateful
   session versus the stateless approach of ToRA and Qwen2.5-Math evaluation, where round k runs
   cells 1..k again in a fresh Python process; time per round and cumulative, side by side;
4. throughput with 1, 4 and 16 concurrent sessions: executions per second and p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_io import percentile, print_table, write_results
from sandbox.errors import KernelStartError
from sandbox.kernel import Kernel
from sandbox.local import LocalLauncher
from sandbox.pool import KernelPool
from sandbox.result import ExecutionStatus
from sandbox.settings import SandboxSettings

TRAJECTORY = [
    "import sympy as sp\nx = sp.symbols('x')",
    "f = x**2 - 5*x + 6\nprint(sp.factor(f))",
    "roots = sp.solve(f, x)\nprint(roots)",
    "total = sum(roots)\nprint(total)",
    "g = sp.diff(f, x)\nprint(g)",
    "print(sp.integrate(f, (x, 0, 1)))",
    "values = [f.subs(x, k) for k in range(5)]\nprint(values)",
    "print(sp.Rational(total, 7) + sp.Rational(1, 3))",
]


def ms(seconds: float) -> float:
    return seconds * 1000


def task_cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (schedstat: nanoseconds, unlike the 10 ms ticks of stat)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        pass
    return total / 1e9


def kernel_cpu_s(kernel: Kernel) -> float:
    """CPU of the kernel's processes (all in its cgroup: bwrap and the kernel, or init and the fork)."""
    group = getattr(kernel.process, "group", None)
    pids = group.pids() if group is not None else []
    return sum(task_cpu_s(pid) for pid in pids)


async def start_once(pool: KernelPool, zygote_pid: int | None) -> dict[str, Any]:
    z0 = task_cpu_s(zygote_pid) if zygote_pid else 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    async with pool.session() as s:
        wall = time.perf_counter() - t0
        host_cpu = time.process_time() - c0
        cpu = host_cpu + kernel_cpu_s(s.kernel) + ((task_cpu_s(zygote_pid) - z0) if zygote_pid else 0.0)
        ready = getattr(s.kernel.process, "ready", None)
        steps = ready.result() if ready is not None else {}
        r = await s.execute("print(1)")
        assert r.stdout == "1\n", r
    await pool.drain()
    return {"wall_s": wall, "cpu_s": cpu, "host_cpu_s": host_cpu, "steps": steps}


async def cycles(settings: SandboxSettings, seconds: float, workers: int = 2) -> dict[str, Any]:
    """Start + print(1) + close, back to back from ``workers`` sessions, with the pool refilling."""
    done = 0
    async with KernelPool(settings.model_copy(update={"pool_size": workers})) as pool:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with pool.session() as s:
                    assert (await s.execute("print(1)")).stdout == "1\n"
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        await pool.drain()
        elapsed = time.perf_counter() - t0
    return {"cycles": done, "seconds": elapsed, "cycles_per_s": done / elapsed, "workers": workers}


async def kernel_start(base: SandboxSettings, n: int, cycle_s: float) -> dict[str, Any]:
    """Cold vs forked start, interleaved so that both see the same load."""
    modes = {m: base.model_copy(update={"kernel_start": m, "pool_size": 0}) for m in ("cold", "fork")}
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    async with KernelPool(modes["cold"]) as cold, KernelPool(modes["fork"]) as fork:
        await start_once(fork, None)  # the zygote's own start is not a kernel start
        zygote_pid = getattr(fork.launcher, "zygote_pid", None)
        failures: dict[str, list[str]] = {m: [] for m in modes}
        for _ in range(n):
            for mode, pool in (("cold", cold), ("fork", fork)):
                try:
                    samples[mode].append(await start_once(pool, zygote_pid if mode == "fork" else None))
                except KernelStartError as exc:  # counted and reported, not hidden
                    failures[mode].append(str(exc))
                    await pool.drain()
        describe = fork.launcher.describe()
    out: dict[str, Any] = {"n": n, "launcher": describe, "start_failures": failures}
    for mode, rows in samples.items():
        walls, cpus = [r["wall_s"] for r in rows], [r["cpu_s"] for r in rows]
        out[mode] = {
            "wall_p50_ms": ms(percentile(walls, 50)),
            "wall_p99_ms": ms(percentile(walls, 99)),
            "cpu_p50_ms": ms(percentile(cpus, 50)),
            "cpu_p99_ms": ms(percentile(cpus, 99)),
            "host_cpu_p50_ms": ms(percentile([r["host_cpu_s"] for r in rows], 50)),
        }
    step_names = [k for k in samples["fork"][0]["steps"] if k.endswith("_ms")]
    out["fork_steps_p50_ms"] = {
        k: percentile([r["steps"].get(k, float("nan")) for r in samples["fork"]], 50) for k in step_names
    }
    for mode, cfg in modes.items():
        out[mode]["cycles"] = await cycles(cfg, cycle_s)
    for mode, trips in (await interleaved_round_trips(modes, max(100, n))).items():
        out[mode]["round_trip"] = trips
    return out


async def interleaved_round_trips(modes: dict[str, SandboxSettings], n: int) -> dict[str, dict[str, Any]]:
    """The warm ``print(1+1)`` round trip in a cold and a forked kernel, alternating (same load)."""
    samples: dict[str, list[float]] = {m: [] for m in modes}
    async with contextlib.AsyncExitStack() as stack:
        sessions = {}
        for mode, cfg in modes.items():
            pool = await stack.enter_async_context(KernelPool(cfg.model_copy(update={"pool_size": 1})))
            sessions[mode] = await stack.enter_async_context(pool.session())
        for i in range(n + 20):
            for mode, s in sessions.items():
                t0 = time.perf_counter()
                r = await s.execute("print(1+1)")
                if i >= 20:
                    samples[mode].append(time.perf_counter() - t0)
                assert r.stdout == "2\n", r
    return {
        m: {"p50_ms": ms(percentile(v, 50)), "p99_ms": ms(percentile(v, 99)), "n": n}
        for m, v in samples.items()
    }


def print_start(start: dict[str, Any]) -> None:
    print_table(
        f"kernel start: lease request on an empty pool -> kernel_info_reply ({start['n']} each, interleaved)",
        ["start", "wall p50 ms", "wall p99 ms", "CPU p50 ms", "CPU p99 ms", "cycles/s (2 workers)", "print(1+1) p50 ms"],
        [
            (m, r["wall_p50_ms"], r["wall_p99_ms"], r["cpu_p50_ms"], r["cpu_p99_ms"],
             r["cycles"]["cycles_per_s"], r["round_trip"]["p50_ms"])
            for m, r in ((m, start[m]) for m in ("cold", "fork"))
        ],
    )  # fmt: skip
    print_table(
        "forked start, steps (p50 ms, in the child)", ["step", "ms"], list(start["fork_steps_p50_ms"].items())
    )


async def round_trip(settings: SandboxSettings, n: int) -> dict[str, Any]:
    async with KernelPool(settings.model_copy(update={"pool_size": 1})) as pool, pool.session() as s:
        for _ in range(20):
            await s.execute("print(1+1)")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = await s.execute("print(1+1)")
            samples.append(time.perf_counter() - t0)
            assert r.stdout == "2\n", r
    return {"p50_ms": ms(percentile(samples, 50)), "p99_ms": ms(percentile(samples, 99)), "n": n}


async def bare_round_trip(n: int) -> dict[str, Any]:
    """The reference: jupyter_client's own manager and ``execute_interactive``, TCP, no isolation."""
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager()
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        samples = []
        for i in range(n + 20):
            t0 = time.perf_counter()
            await kc.execute_interactive("print(1+1)", output_hook=lambda _msg: None)
            if i >= 20:
                samples.append(time.perf_counter() - t0)
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    return {"p50_ms": ms(percentile(samples, 50)), "p99_ms": ms(percentile(samples, 99)), "n": n}


async def lease_and_start(settings: SandboxSettings, n: int) -> dict[str, Any]:
    leases = []
    async with KernelPool(settings.model_copy(update={"pool_size": 2})) as pool:
        for _ in range(n):
            await pool.wait_until(lambda st: st.idle == 2 and st.starting == 0)
            t0 = time.perf_counter()
            async with pool.session():
                leases.append(time.perf_counter() - t0)
    starts = []
    launcher = LocalLauncher(settings)
    for slot in range(max(3, n // 10)):
        t0 = time.perf_counter()
        kernel = await Kernel.start(launcher, settings, slot)
        starts.append(time.perf_counter() - t0)
        await kernel.close()
    return {
        "lease_p50_ms": ms(percentile(leases, 50)),
        "lease_p99_ms": ms(percentile(leases, 99)),
        "cold_start_p50_s": percentile(starts, 50),
        "cold_start_max_s": max(starts),
    }


async def trajectory(settings: SandboxSettings) -> dict[str, Any]:
    stateful = []
    async with KernelPool(settings.model_copy(update={"pool_size": 1})) as pool, pool.session() as s:
        for cell in TRAJECTORY:
            t0 = time.perf_counter()
            r = await s.execute(cell, timeout_s=60)
            stateful.append(time.perf_counter() - t0)
            assert r.status == ExecutionStatus.OK, r
    stateless = []
    for k in range(1, len(TRAJECTORY) + 1):
        program = "\n".join(TRAJECTORY[:k])
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", program, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        stateless.append(time.perf_counter() - t0)
    rounds = []
    for k in range(len(TRAJECTORY)):
        a, b = sum(stateful[: k + 1]), sum(stateless[: k + 1])
        rounds.append({"round": k + 1, "stateful_s": a, "stateless_s": b, "speedup": b / a})
    return {"rounds": rounds, "speedup_at_round_8": rounds[-1]["speedup"]}


async def throughput(settings: SandboxSettings, concurrency: int, cells: int) -> dict[str, Any]:
    cfg = settings.model_copy(update={"pool_size": concurrency, "max_kernels": max(concurrency, 2)})
    latencies: list[float] = []
    async with KernelPool(cfg) as pool:

        async def worker() -> None:
            async with pool.session() as s:
                for _ in range(cells):
                    t0 = time.perf_counter()
                    r = await s.execute("print(1+1)")
                    latencies.append(time.perf_counter() - t0)
                    assert r.status == ExecutionStatus.OK

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "executions_per_s": len(latencies) / elapsed,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
    }


async def main(args: argparse.Namespace) -> None:
    base = SandboxSettings(max_kernels=4, run_dir=SandboxSettings().run_dir / "bench", uid_base=64700)
    results: dict[str, Any] = {
        "settings": base.model_dump(mode="json"),
        "load_average": os.getloadavg(),
        "start": await kernel_start(base, 20 if args.quick else 100, 10.0 if args.quick else 30.0),
    }
    print_start(results["start"])
    start_summary = {
        f"{m}_start_{k}": round(results["start"][m][k], 1)
        for m in ("cold", "fork") for k in ("wall_p50_ms", "wall_p99_ms", "cpu_p50_ms")
    } | {
        f"{m}_cycles_per_s": round(results["start"][m]["cycles"]["cycles_per_s"], 1) for m in ("cold", "fork")
    }  # fmt: skip
    start_summary |= {f"{m}_start_failures": len(v) for m, v in results["start"]["start_failures"].items()}
    results["load_average_after_start"] = os.getloadavg()
    if args.only == "start":
        write_results(Path(args.out), "sandbox", results, start_summary)
        return
    configs = {"bwrap": base, "none": base.model_copy(update={"isolation": "none"})}
    n = 100 if args.quick else 500
    for name, cfg in configs.items():
        results[name] = {
            "round_trip": await round_trip(cfg, n),
            "lease": await lease_and_start(cfg, 20 if args.quick else 50),
        }
    results["bare"] = {"round_trip": await bare_round_trip(n)}
    rt_rows = [
        (
            "bare jupyter_client",
            results["bare"]["round_trip"]["p50_ms"],
            results["bare"]["round_trip"]["p99_ms"],
            "",
            "",
            "",
        )
    ]
    rt_rows += [
        (name, r["round_trip"]["p50_ms"], r["round_trip"]["p99_ms"], r["lease"]["lease_p50_ms"],
         r["lease"]["lease_p99_ms"], r["lease"]["cold_start_p50_s"])
        for name, r in results.items() if name != "bare"
    ]  # fmt: skip
    print_table(
        "print(1+1) round trip and leases",
        ["isolation", "rt p50 ms", "rt p99 ms", "lease p50 ms", "lease p99 ms", "cold start s"],
        rt_rows,
    )
    results["trajectory"] = await trajectory(base)
    print_table(
        "8-cell trajectory: stateful session vs stateless re-execution (cumulative seconds)",
        ["round", "stateful s", "stateless s", "speedup"],
        [
            (r["round"], r["stateful_s"], r["stateless_s"], r["speedup"])
            for r in results["trajectory"]["rounds"]
        ],
    )
    cells = 20 if args.quick else 100
    results["throughput"] = [await throughput(base, c, cells) for c in (1, 4, 16)]
    print_table(
        f"throughput, {cells} cells per session",
        ["sessions", "exec/s", "p50 ms", "p99 ms"],
        [(t["concurrency"], t["executions_per_s"], t["p50_ms"], t["p99_ms"]) for t in results["throughput"]],
    )
    summary = {
        **start_summary,
        "rt_p50_ms": round(results["bwrap"]["round_trip"]["p50_ms"], 2),
        "rt_p99_ms": round(results["bwrap"]["round_trip"]["p99_ms"], 2),
        "bare_rt_p50_ms": round(results["bare"]["round_trip"]["p50_ms"], 2),
        "lease_p50_ms": round(results["bwrap"]["lease"]["lease_p50_ms"], 3),
        "cold_start_s": round(results["bwrap"]["lease"]["cold_start_p50_s"], 3),
        "stateful_speedup_round_8": round(results["trajectory"]["speedup_at_round_8"], 1),
        "exec_per_s_16": round(results["throughput"][-1]["executions_per_s"], 1),
    }
    write_results(Path(args.out), "sandbox", results, summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/sandbox.json", help="Where to write the JSON results.")
    parser.add_argument("--quick", action="store_true", help="Fewer samples (a smoke run).")
    parser.add_argument(
        "--only", choices=["start"], help="Only the kernel-start comparison (cold vs forked)."
    )
    asyncio.run(main(parser.parse_args()))
