"""Server soak: streaming solve clients and hostile session clients for minutes, with faults.

    python -m benchmarks.server_soak [--minutes 10] [--solve-clients 32] [--session-clients 16]
        [--kill-every-s 1] [--out runs/bench/server_soak.json]

The server is ``mathcoder serve``'s app in its own process (a stateless scripted model that writes
one cell per trajectory, ``benchmarks.server_load.LoadScript``; real kernels), started by this
script with ``--serve``, with the default admission limits, so that a crowd meets its queue.
Meanwhile:

- ``--solve-clients`` clients stream ``/v1/solve`` back to back; one request in ten leaves after
  its first events (a client that disconnects);
- ``--session-clients`` clients open a session each and run cells in it, most of them hostile — a
  memory bomb, a fork bomb, an infinite loop, an output flood — then a plain one, and close it; one
  request in ten is abandoned mid-cell (the client's timeout);
- a random kernel process of the server's uid range is SIGKILLed every ``--kill-every-s`` on average;
- the server's RSS, open file descriptors and kernel processes are read every ``--sample-s``;
- at the end, SIGTERM: the server drains and exits; then no kernel may be left.

Every response is classed: ``ok`` (a 200 whose stream ended with ``done``, or a session call's
result), ``failed`` (a complete answer that reports a failure: a stream whose trajectory lost its
kernel to the killer ends with an ``error`` event), ``refused`` (429 with ``Retry-After``),
``left`` (the client left on purpose), ``bad`` (a 5xx, a 429 without ``Retry-After``, another
status, a torn stream, a transport error).  Targets (issue #18): no 5xx and nothing ``bad``; at least
90% of the requests that were not left on purpose complete (``ok``, or ``failed`` by an injected
kill and saying so), the rest refused cleanly; RSS and fds flat (growth from minute 2 to the end at most 10% and 10 fds); no
kernel after shutdown.  Prints a table, writes the JSON (``--out``); exit status 1 if a target is
missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from benchmarks.bench_io import print_table, write_results
from benchmarks.procs import KernelKiller, is_kernel, pids_of_uids
from benchmarks.server_load import LoadScript, rss_mb, sandbox_settings, wait_ready
from sandbox import cgroup

API_KEY = "sk-soak-test-0123456789abcdef"
HOSTILE = {
    "memory bomb": "blob = bytearray(4 * 1024**3)",
    "memory growth": 'chunks = []\nwhile True:\n    chunks.append(b"\\x01" * (50 * 1024**2))',
    "fork bomb": "import subprocess\nps = []\nwhile True:\n    ps.append(subprocess.Popen(['sleep', '600']))",
    "infinite loop": "while True:\n    pass",
    "output flood": "while True:\n    print('x' * 1000)",
}
PLAIN = "print(sum(range(10)))"


def serve(args: argparse.Namespace) -> None:
    """The server process: the default admission limits, a session per session client."""
    import uvicorn

    from runtime.server import ServerSettings, create_app
    from runtime.server.logs import configure_logging
    from sandbox.pool import KernelPool

    configure_logging("warning")
    settings = ServerSettings(
        api_keys=f"{API_KEY} solve,execute soak",
        max_sessions=args.session_clients,
        max_sessions_per_key=args.session_clients,
        per_key_concurrency=args.solve_clients,
        max_cell_timeout_s=3.0,
    )
    sandbox = sandbox_settings(args.uid_base, "soak", True).model_copy(
        update={
            "max_kernels": args.max_kernels,
            "pool_size": 4,
            "cell_timeout_s": 3.0,
            "interrupt_grace_s": 1.0,
        }
    )
    app = create_app(settings, backend=LoadScript(0.02, 1), pool=KernelPool(sandbox))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False, ws="none")


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    kills: int = 0

    def add(self, outcome: str, status: int | None = None, why: str = "") -> None:
        self.outcomes[outcome] += 1
        if status is not None:
            self.statuses[status] += 1
        if outcome == "bad" and len(self.bad) < 20:
            self.bad.append(why[:300])


def classify(response: httpx.Response) -> tuple[str, str]:
    """``refused`` or ``bad`` for a response that is not a 200."""
    if response.status_code == 429 and response.headers.get("retry-after"):
        return "refused", ""
    return "bad", f"HTTP {response.status_code}: {response.text[:200]}"


async def solve_client(
    client: httpx.AsyncClient, tally: Tally, until: float, draw: random.Random, who: int
) -> None:
    n = 0
    while time.monotonic() < until:
        n += 1
        leave = draw.random() < 0.1
        body = {"problem": f"Soak problem {who}-{n}: what is 6 times 7?", "stream": True}
        try:
            async with aconnect_sse(client, "POST", "/v1/solve", json=body) as source:
                response = source.response
                if response.status_code != 200:
                    await response.aread()
                    outcome, why = classify(response)
                    tally.add(outcome, response.status_code, why)
                    if outcome == "refused":
                        await asyncio.sleep(float(response.headers["retry-after"]) * draw.random())
                    continue
                events, done, error = 0, None, False
                async for sse in source.aiter_sse():
                    events += 1
                    if leave and events >= 3:
                        break
                    if sse.event == "error":
                        error = True
                    if sse.event == "done":
                        done = json.loads(sse.data)
                if leave and done is None:
                    tally.add("left", 200)
                elif done is None:
                    tally.add("bad", 200, "a stream without its done event")
                elif done.get("ok"):
                    tally.add("ok", 200)
                elif error:
                    tally.add("failed", 200)
                else:
                    tally.add("bad", 200, f"done without ok or an error event: {done}")
        except httpx.HTTPError as exc:
            tally.add("bad", None, f"{type(exc).__name__}: {exc}")


async def session_client(client: httpx.AsyncClient, tally: Tally, until: float, draw: random.Random) -> None:
    while time.monotonic() < until:
        created = await client.post("/v1/sessions")
        if created.status_code != 201:
            outcome, why = classify(created)
            tally.add(outcome, created.status_code, why)
            if outcome == "refused":
                await asyncio.sleep(float(created.headers["retry-after"]) * draw.random())
            continue
        tally.add("ok", 201)
        sid = created.json()["id"]
        cells = [*draw.sample(list(HOSTILE.values()), 2), PLAIN]
        for code in cells:
            leave = draw.random() < 0.1
            try:
                r = await client.post(
                    f"/v1/sessions/{sid}/execute", json={"code": code}, timeout=0.5 if leave else 60
                )
            except httpx.TimeoutException:
                tally.add("left" if leave else "bad", None, "execute timed out")
                continue
            except httpx.HTTPError as exc:
                tally.add("bad", None, f"{type(exc).__name__}: {exc}")
                continue
            if r.status_code == 200:
                tally.add("ok", 200)
            else:
                outcome, why = classify(r)
                tally.add(outcome, r.status_code, why)
        r = await client.delete(f"/v1/sessions/{sid}")
        tally.add("ok" if r.status_code == 204 else classify(r)[0], r.status_code, r.text[:200])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def soak(args: argparse.Namespace, proc: subprocess.Popen[bytes], url: str) -> dict[str, Any]:
    uids = range(args.uid_base, args.uid_base + args.max_kernels)
    tally = Tally()
    samples: list[dict[str, float]] = []
    start = time.monotonic()
    until = start + args.minutes * 60
    killer = KernelKiller(uids, args.kill_every_s, args.seed)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def sample() -> None:
        while time.monotonic() < until:
            samples.append({
                "minute": round((time.monotonic() - start) / 60, 2),
                "rss_mb": round(rss_mb(proc.pid), 1),
                "fds": open_fds(proc.pid),
                "kernels": len([p for p in pids_of_uids(uids) if is_kernel(p)]),
            })  # fmt: skip
            await asyncio.sleep(args.sample_s)

    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:
        killer.start()
        try:
            await asyncio.gather(
                sample(),
                *(solve_client(client, tally, until, random.Random(args.seed * 1000 + i), i) for i in range(args.solve_clients)),
                *(session_client(client, tally, until, random.Random(args.seed * 2000 + i)) for i in range(args.session_clients)),
            )  # fmt: skip
        finally:
            killer.stopped.set()
            killer.join()
            tally.kills = killer.kills
    return {"tally": tally, "samples": samples, "uids": uids}


def growth(samples: list[dict[str, float]], from_minute: float) -> dict[str, float]:
    later = [s for s in samples if s["minute"] >= from_minute] or samples[-1:]
    first, last = later[0], samples[-1]
    return {
        "rss_mb_at_start": samples[0]["rss_mb"],
        "rss_mb_from": first["rss_mb"],
        "rss_mb_end": last["rss_mb"],
        "rss_growth": round(last["rss_mb"] / first["rss_mb"] - 1, 4),
        "fds_at_start": samples[0]["fds"],
        "fds_from": first["fds"],
        "fds_end": last["fds"],
        "fds_growth": last["fds"] - first["fds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--solve-clients", type=int, default=32)
    parser.add_argument("--session-clients", type=int, default=16)
    parser.add_argument("--kill-every-s", type=float, default=1.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--growth-from-minute", type=float, default=2.0)
    parser.add_argument("--max-kernels", type=int, default=40)
    parser.add_argument("--port", type=int, default=18970)
    parser.add_argument("--uid-base", type=int, default=66000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/server_soak.json"))
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return 0

    command = [sys.executable, "-m", "benchmarks.server_soak", "--serve", "--port", str(args.port),
               "--uid-base", str(args.uid_base), "--max-kernels", str(args.max_kernels),
               "--solve-clients", str(args.solve_clients), "--session-clients", str(args.session_clients)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{args.port}"
    try:
        asyncio.run(wait_ready(url, proc, 180))
        ran = asyncio.run(soak(args, proc, url))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    tally: Tally = ran["tally"]
    uids: range = ran["uids"]
    left = {
        "processes": pids_of_uids(uids),
        "cgroups": [
            d.name
            for p in cgroup.parents()
            if p.is_dir()
            for d in p.iterdir()
            if d.name.startswith(f"mathcoder-{proc.pid}-")
        ],
    }
    counted = sum(n for k, n in tally.outcomes.items() if k != "left")
    ok_share = tally.outcomes["ok"] / counted if counted else 0.0
    complete_share = (tally.outcomes["ok"] + tally.outcomes["failed"]) / counted if counted else 0.0
    tail = stderr.decode(errors="replace")
    trend = growth(ran["samples"], args.growth_from_minute)
    checks = {
        "no 5xx": not any(s >= 500 for s in tally.statuses),
        "nothing bad (torn streams, other statuses, transport errors)": tally.outcomes["bad"] == 0,
        ">= 90% of requests complete, the rest refused with Retry-After": complete_share >= 0.9,
        "RSS flat (<= 10% growth)": trend["rss_growth"] <= 0.10,
        "fds flat (<= 10 more)": trend["fds_growth"] <= 10,
        # uvicorn drains, then raises the signal it caught again: -SIGTERM is its clean exit.
        "the server drained and exited on SIGTERM": proc.returncode in (0, -signal.SIGTERM)
        and "Traceback" not in tail,
        "no kernel or cgroup left": not any(left.values()),
    }
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("serve", "out")}
        | {"out": str(args.out)},
        "outcomes": dict(tally.outcomes),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "ok_share": round(ok_share, 4),
        "complete_share": round(complete_share, 4),
        "kernel_kills": tally.kills,
        "dropped_messages_logged": tail.count("dropped a message the host cannot read"),
        "bad_examples": tally.bad,
        "trend": trend,
        "samples": ran["samples"],
        "left": left,
        "server_exit": proc.returncode,
        "server_stderr_tail": tail[-2000:],
        "checks": checks,
    }
    rows = [
        *([k, str(v)] for k, v in sorted(tally.outcomes.items())),
        ["statuses", ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items()))],
        ["complete / ok share (leaving clients aside)", f"{complete_share:.1%} / {ok_share:.1%}"],
        ["kernel kills", str(tally.kills)],
        ["RSS MB start / minute 2 / end", f"{trend['rss_mb_at_start']} / {trend['rss_mb_from']} / {trend['rss_mb_end']}"],
        ["fds start / minute 2 / end", f"{trend['fds_at_start']} / {trend['fds_from']} / {trend['fds_end']}"],
        *([check, "ok" if ok else "FAILED"] for check, ok in checks.items()),
    ]  # fmt: skip
    print_table(f"server soak: {args.minutes:g} min", ["", ""], rows)
    write_results(
        args.out,
        "server_soak",
        result,
        {"checks_passed": all(checks.values()), "complete_share": result["complete_share"]},
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
