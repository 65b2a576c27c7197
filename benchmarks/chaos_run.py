"""Chaos run of the harness: faults from outside while ``mathcoder bench`` runs, and what is left.

    python -m benchmarks.chaos_run [--problems 300] [--concurrency 16] [--fail-rate 0.05]
        [--kill-every-s 0.5] [--harness-kills 2] [--no-disk-full] [--out runs/bench/chaos.json]
    python -m benchmarks.chaos_run --model default --problems 20     # the real default model

A deterministic model (``ChaosModel``: it writes one cell that computes the problem's expression,
then answers with the value the cell printed) sits behind an OpenAI-compatible engine
(``benchmarks.engine_server``) that fails ``--fail-rate`` of its calls with a 500 on purpose.  The
harness runs as a child process, exactly as a user runs it.  First a clean run of the problems;
then the same run under faults injected from outside:

- ``kill -9`` of a random kernel process of the run's uid range, every ``--kill-every-s`` on
  average (an idle, a leased or a running kernel: whichever the draw hits);
- the harness itself SIGKILLed ``--harness-kills`` times (spread over the run) and started again
  with the same command, which resumes;
- the run folder's filesystem filled (a 16 MB tmpfs, as root): the harness must stop with a clear
  error and no torn or lost record, and resume once the space is back.

The chaos run is resumed until it ends with every problem graded; its records must then equal the
clean run's (ids, answers, grades), and afterwards no process of the uid range, no kernel cgroup
and no kernel directory may be left.  Prints a table, writes the JSON (``--out``), and exits 1 if a
check failed.  With ``--model default`` the problems are the first GSM8K test problems and the
model is the embedded default on its CPU engine: the run must end with one record per problem and
nothing left (a real model's records are not compared: batching makes them differ by a token).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench_io import print_table, write_results
from benchmarks.engine_server import LiveServer, openai_app
from benchmarks.procs import KernelKiller, pids_of_uids
from runtime.backends.base import Completion, CompletionRequest
from runtime.backends.scripted import ChatMLWords
from runtime.backends.stops import cut_at_stop
from sandbox import cgroup
from sandbox.settings import SandboxSettings

PROBLEM = re.compile(r"Chaos problem (\d+): what is (\d+) \* (\d+) \+ (\d+)\?")
OUTPUT = re.compile(r"```output\n(.*?)\n```", re.S)
MAX_KERNELS = 24


class ChaosModel(ChatMLWords):
    """Stateless and deterministic: the step is read from the prompt, so a retried or resumed
    trajectory writes exactly what it wrote the first time.  Step 1: a cell that computes the
    problem's expression (slowly enough that kills land while it runs); step 2: the answer, the
    value the cell printed (a lost kernel that went unnoticed would show here as a wrong answer)."""

    name = "chaos"

    async def complete(self, request: CompletionRequest) -> Completion:
        at = [m for m in PROBLEM.finditer(request.prompt)]
        if not at:
            return Completion(text="I do not know.", finish_reason="eos", completion_tokens=4)
        m = at[-1]
        turn = request.prompt[m.end() :]
        shown = OUTPUT.findall(turn)
        if not shown:
            a, b, c = (int(m.group(i)) for i in (2, 3, 4))
            code = f"import time\ntime.sleep(0.2)\nprint({a} * {b} + {c})"
            text = f"Let me compute it.\n```python\n{code}\n```\n"
        else:
            text = f"The cell printed {shown[-1].strip()}, so the answer is \\boxed{{{shown[-1].strip()}}}."
        cut, stop = cut_at_stop(text, request.stop)
        return Completion(
            text=cut,
            finish_reason="stop" if stop is not None else "eos",
            stop=stop,
            completion_tokens=len(cut.split()),
            prompt_tokens=len(request.prompt.split()),
        )


def write_problems(path: Path, n: int, seed: int) -> None:
    draw = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, c = draw.randint(2, 999), draw.randint(2, 99), draw.randint(0, 999)
        rows.append({"id": f"chaos-{i}", "question": f"Chaos problem {i}: what is {a} * {b} + {c}?",
                     "answer": str(a * b + c)})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@dataclass
class Faults:
    kernel_kills: int = 0
    kernel_kill_misses: int = 0  # the drawn process was gone before the signal
    harness_kills: int = 0
    disk_full: int = 0
    disk_full_errors: list[str] = field(default_factory=list)
    disk_full_stderr: str = ""
    starts: int = 0
    harness_pids: list[int] = field(default_factory=list)
    engine_calls: int = 0
    engine_failures: int = 0


def records_in(out: Path) -> int:
    try:
        return (out / "records.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def harness_command(args: argparse.Namespace, data: Path, out: Path, url: str | None) -> list[str]:
    command = [sys.executable, "-c", "import sys; sys.argv[0] = 'mathcoder'; from runtime.cli import app; app()",
               "bench", "--out", str(out), "--concurrency", str(args.concurrency), "--no-progress"]  # fmt: skip
    if url is None:  # the real default model
        return [*command, "--dataset", "gsm8k", "--split", "test", "--limit", str(args.problems),
                "--max-tokens", str(args.max_tokens)]  # fmt: skip
    return [*command, "--data", str(data), "--dataset", "chaos", "--backend", "openai", "--base-url", url,
            "--model", "chaos", "--preset", "tir", "--wall-time-s", "600"]  # fmt: skip


def harness_env(uid_base: int, run_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MATHCODER_SANDBOX_UID_BASE": str(uid_base),
        "MATHCODER_SANDBOX_MAX_KERNELS": str(MAX_KERNELS),
        "MATHCODER_SANDBOX_RUN_DIR": str(run_dir),
        "MATHCODER_BENCH_RETRY_BACKOFF_S": "0.2",
        "MATHCODER_OPENAI_BACKOFF_BASE_S": "0.05",
    }


def run_until_done(
    command: list[str], env: dict[str, str], out: Path, faults: Faults, *, kill_at: list[int],
    fill_at: int | None, ballast: Path | None, max_starts: int = 12,
) -> dict[str, Any]:  # fmt: skip
    """Start the harness, resume it after each fault, until it exits 0 with every problem graded;
    the last summary line it printed."""
    while faults.starts < max_starts:
        faults.starts += 1
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        faults.harness_pids.append(proc.pid)
        killed = filled = False
        while proc.poll() is None:
            n = records_in(out)
            if kill_at and n >= kill_at[0]:
                kill_at.pop(0)
                proc.send_signal(signal.SIGKILL)
                faults.harness_kills += 1
                killed = True
            elif fill_at is not None and ballast is not None and not filled and n >= fill_at:
                fill(ballast)
                faults.disk_full += 1
                filled = True
                fill_at = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
        stdout, stderr = proc.communicate()
        if filled:
            faults.disk_full_errors.append(stderr.strip().splitlines()[-1] if stderr.strip() else "")
            faults.disk_full_stderr = stderr[-4000:]
            assert ballast is not None
            ballast.unlink(missing_ok=True)  # the space is back: the next start resumes
            continue
        if killed:
            continue
        if proc.returncode != 0:
            raise RuntimeError(f"the harness failed (exit {proc.returncode}): {stderr[-2000:]}")
        summary: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        if not summary.get("infrastructure_failures"):
            return summary
    raise RuntimeError(f"the run did not finish in {max_starts} starts")


def fill(ballast: Path) -> None:
    """Fill the filesystem ``ballast`` lies on (until ENOSPC)."""
    with contextlib.suppress(OSError), ballast.open("wb") as f:
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()


def outcomes(out: Path) -> list[tuple[str, str | None, bool]]:
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    return [(r["id"], r["answer"], r["correct"]) for r in rows]


def leftovers(uids: range, run_dir: Path, hosts: list[int]) -> dict[str, list[str]]:
    """What the runs left: processes of the uid range, the harnesses' kernel cgroups, kernel folders."""
    prefixes = tuple(f"mathcoder-{pid}-" for pid in hosts)
    groups = [d.name for parent in cgroup.parents() if parent.is_dir() for d in parent.iterdir()
              if d.name.startswith(prefixes)]  # fmt: skip
    files = sorted(d.name for d in run_dir.iterdir()) if run_dir.is_dir() else []
    return {"processes": [str(p) for p in pids_of_uids(uids)], "cgroups": groups, "kernel_dirs": files}


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Any:
    """A tmpfs of ``size_mb`` at ``path`` (as root); None where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True
    ).returncode == 0  # fmt: skip
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--fail-rate", type=float, default=0.05, help="Share of engine calls failed on purpose."
    )
    parser.add_argument("--kill-every-s", type=float, default=0.5, help="Mean seconds between kernel kills.")
    parser.add_argument("--harness-kills", type=int, default=2)
    parser.add_argument("--disk-full", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model", choices=["chaos", "default"], default="chaos")
    parser.add_argument("--max-tokens", type=int, default=256, help="Per problem, with --model default.")
    parser.add_argument("--uid-base", type=int, default=65000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, default=None, help="Folder for the runs (default: a temporary one)."
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/chaos.json"))
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir = SandboxSettings().run_dir / f"chaos-{os.getpid()}"
    uids = range(args.uid_base, args.uid_base + MAX_KERNELS)
    data = work / "problems.jsonl"
    write_problems(data, args.problems, args.seed)
    engine = None
    if args.model == "chaos":
        app = openai_app(ChaosModel(), fail_rate=args.fail_rate, seed=args.seed)
        engine = LiveServer(app).start()
    url = None if engine is None else f"{engine.url}/v1"
    env = harness_env(args.uid_base, run_dir)
    faults = Faults()
    started = time.monotonic()
    checks: dict[str, bool] = {}
    try:
        clean: list[tuple[str, str | None, bool]] = []
        clean_faults = Faults()
        clean_s = 0.0
        if engine is not None:
            t0 = time.monotonic()
            run_until_done(harness_command(args, data, work / "clean", url), env, work / "clean", clean_faults,
                           kill_at=[], fill_at=None, ballast=None)  # fmt: skip
            clean_s = time.monotonic() - t0
            clean = outcomes(work / "clean")
        with small_filesystem(work / "fs", 16) as fs:
            out = (fs or work) / "chaos"
            n = args.problems
            kill_at = [round(n * (i + 1) / (args.harness_kills + 2)) for i in range(args.harness_kills)]
            fill_at = round(n * 0.8) if args.disk_full and fs is not None else None
            killer = KernelKiller(uids, args.kill_every_s, args.seed)
            killer.start()
            t0 = time.monotonic()
            try:
                summary = run_until_done(harness_command(args, data, out, url), env, out, faults,
                                         kill_at=kill_at, fill_at=fill_at, ballast=(fs / "ballast") if fs else None)  # fmt: skip
            finally:
                killer.stopped.set()
                killer.join()
                faults.kernel_kills, faults.kernel_kill_misses = killer.kills, killer.misses
            chaos_s = time.monotonic() - t0
            chaotic = outcomes(out)
            records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        if engine is not None:
            faults.engine_calls, faults.engine_failures = app.state.calls, app.state.failed
        left = leftovers(uids, run_dir, faults.harness_pids + clean_faults.harness_pids)
        retried = sum(s["attempts"] - 1 for r in records for s in r["samples"])
        ids = [r[0] for r in chaotic]
        checks["one record per problem"] = len(ids) == len(set(ids)) == n
        if engine is not None:
            checks["records equal the clean run's (ids, answers, grades)"] = chaotic == clean
            checks["every answer right (the model is exact)"] = all(c for _, _, c in chaotic)
        checks["every fault injected"] = faults.harness_kills == args.harness_kills and (
            fill_at is None or faults.disk_full == 1
        )
        checks["a full disk stops the run with a clear error"] = all(
            "No space left on device" in e and "run the same command again" in e
            for e in faults.disk_full_errors
        )
        checks["nothing left behind"] = not any(left.values())
    finally:
        if engine is not None:
            engine.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    result = {
        "model": args.model,
        "problems": args.problems,
        "concurrency": args.concurrency,
        "fail_rate": args.fail_rate,
        "clean_s": round(clean_s, 1),
        "chaos_s": round(chaos_s, 1),
        "faults": faults.__dict__,
        "trajectories_retried_in_run": retried,
        "summary": {k: summary.get(k) for k in ("accuracy", "correct", "errors", "infrastructure_failures")},
        "leftovers": left,
        "checks": checks,
        "wall_s": round(time.monotonic() - started, 1),
    }
    rows = [
        ["kernel kills (missed)", f"{faults.kernel_kills} ({faults.kernel_kill_misses})"],
        ["harness SIGKILLs", str(faults.harness_kills)],
        ["disk full", str(faults.disk_full)],
        ["engine calls failed / all", f"{faults.engine_failures} / {faults.engine_calls}"],
        ["harness starts", str(faults.starts)],
        ["trajectories retried (in the records)", str(retried)],
        ["clean run s / chaos run s", f"{clean_s:.1f} / {chaos_s:.1f}"],
        *([check, "ok" if ok else "FAILED"] for check, ok in checks.items()),
    ]
    print_table(f"chaos run: {args.problems} problems, model {args.model}", ["", ""], rows)
    write_results(
        args.out, "chaos_run", result, {"checks_passed": all(checks.values()), "wall_s": result["wall_s"]}
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
