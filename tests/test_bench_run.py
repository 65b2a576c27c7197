"""Benchmark runs: grading, voting, crash-safe resume, Ray sharding (real kernels, a scripted model).

The scripted backend (a replay test double) keeps these fast; the one test with the real default
model is marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from benchmarks.datasets import load_jsonl
from benchmarks.records import Problem, ProblemRecord, RunConfig
from benchmarks.run import RunError, benchmark_folder, run_benchmark
from benchmarks.summary import build_report
from runtime.backends.factory import BackendSpec, scripted_backend
from runtime.grading import is_equivalent
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

MATHCODER = str(Path(sys.executable).parent / "mathcoder")
SETTINGS = SandboxSettings(
    pool_size=1, max_kernels=4, cell_timeout_s=5, interrupt_grace_s=1, uid_base=64100,
    run_dir=SandboxSettings().run_dir / "test-bench-run",
)  # fmt: skip
SUBPROCESS_ENV = {
    **os.environ,
    "MATHCODER_SANDBOX_UID_BASE": "64200",
    "MATHCODER_SANDBOX_POOL_SIZE": "0",
    "MATHCODER_SANDBOX_RUN_DIR": str(SandboxSettings().run_dir / "test-bench-cli"),
    "MATHCODER_BENCH_RETRY_BACKOFF_S": "0",
}


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed trajectories (the scripted ones that run out of steps) are retried without waiting."""
    monkeypatch.setenv("MATHCODER_BENCH_RETRY_BACKOFF_S", "0")


def eos(text: str, delay_s: float = 0.0) -> dict[str, Any]:
    return {"text": text, "eos": True, "delay_s": delay_s}


ROWS = [  # question, reference, script, expected: (answer, correct)
    ("What is 2 + 3?", "5", [eos("So \\boxed{5}.")], ("5", True)),
    ("What is 10 - 4?", "6", [eos("So \\boxed{7}.")], ("7", False)),
    (
        "What is 6 * 7?",
        "42",
        ["Compute.\n```python\nprint(6 * 7)\n```\n", eos("So \\boxed{42}.")],
        ("42", True),
    ),
    ("Half of one?", "0.5", [eos("It is \\boxed{\\frac{1}{2}}.")], ("\\frac{1}{2}", True)),
    ("Name a prime.", "2", [eos("I am not sure.")], (None, False)),
    ("What is 9 / 3?", "3", [], (None, False)),  # the model fails: an error sample
]
SCRIPT = {q: steps for q, _, steps, _ in ROWS}


def write_data(folder: Path, delay_s: float = 0.0) -> tuple[Path, Path]:
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a, _, _ in ROWS))
    script = {
        q: [dict(s, delay_s=delay_s) if isinstance(s, dict) else s for s in steps]
        for q, steps in SCRIPT.items()
    }
    script_path = folder / "script.json"
    script_path.write_text(json.dumps(script))
    return data, script_path


def config_for(data: Path, **kw: Any) -> RunConfig:
    """A config as ``mathcoder bench`` writes it (the CLI resolves the adapter and the model's preset)."""
    from runtime.adapter import model_preset
    from runtime.settings import RuntimeSettings

    kw.setdefault("adapter", "default")
    kw.setdefault("preset", model_preset(RuntimeSettings(adapter=kw["adapter"]), None))
    return RunConfig(dataset="data", split="test", backend="scripted", data_file=str(data.resolve()), **kw)


def essentials(records: list[ProblemRecord]) -> list[tuple[str, str | None, bool, bool]]:
    return [(r.id, r.answer, r.correct, r.pass_at_k) for r in records]


def read(out: Path) -> list[ProblemRecord]:
    return [
        ProblemRecord.model_validate_json(line)
        for line in out.joinpath("records.jsonl").read_text().splitlines()
    ]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        yield pool


@pytest.fixture
def problems(tmp_path: Path) -> tuple[Path, list[Problem]]:
    data, _ = write_data(tmp_path)
    return data, load_jsonl(data, dataset="data", split="test")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_run_grades_each_problem(
    tmp_path: Path, pool: KernelPool, problems: tuple[Path, list[Problem]]
) -> None:
    data, probs = problems
    out = tmp_path / "run"
    summary = await run_benchmark(
        config_for(data, concurrency=3), probs, backend=scripted_backend(SCRIPT), sessions=pool.session,
        out_dir=out, progress=False,
    )  # fmt: skip
    records = read(out)
    assert [(r.answer, r.correct) for r in records] == [expected for *_, expected in ROWS]
    assert [r.id for r in records] == [p.id for p in probs]  # problem order, whatever the finish order
    assert records[2].samples[0].trace is not None and records[2].samples[0].trace.metadata.usage.cells == 1
    assert records[5].samples[0].error is not None and "BackendError" in records[5].samples[0].error
    assert (summary.problems, summary.correct, summary.errors, summary.tool_calls) == (6, 3, 1, 1)
    assert RunConfig.model_validate_json((out / "config.json").read_text()) == config_for(data, concurrency=3)


@pytest.mark.asyncio(loop_scope="module")
async def test_several_samples_vote_and_report_pass_at_k(tmp_path: Path, pool: KernelPool) -> None:
    script = {
        "Two plus three?": [eos("\\boxed{5}"), eos("\\boxed{4}"), eos("\\boxed{5.0}")],
        "Two plus two?": [eos("\\boxed{5}"), eos("\\boxed{4}"), eos("\\boxed{5}")],
    }
    probs = [
        Problem(id="a", question="Two plus three?", answer="5", dataset="t", split="test"),
        Problem(id="b", question="Two plus two?", answer="4", dataset="t", split="test"),
    ]
    config = RunConfig(
        dataset="t", split="test", backend="scripted", samples=3, temperature=0.7, concurrency=1
    )
    await run_benchmark(
        config,
        probs,
        backend=scripted_backend(script),
        sessions=pool.session,
        out_dir=tmp_path,
        progress=False,
    )
    a, b = read(tmp_path)
    assert (a.answer, a.correct, a.pass_at_k) == ("5", True, True)  # 5 and 5.0 are one vote
    assert (b.answer, b.correct, b.pass_at_k) == ("5", False, True)
    seeds = [s.trace.metadata.sampling["seed"] for s in a.samples if s.trace is not None]
    assert seeds == [0, 1, 2]


@pytest.mark.asyncio(loop_scope="module")
async def test_resume_drops_a_torn_last_line_and_rejects_another_config(
    tmp_path: Path, pool: KernelPool, problems: tuple[Path, list[Problem]]
) -> None:
    data, probs = problems
    out = tmp_path / "run"
    config = config_for(data, concurrency=2)

    async def run(cfg: RunConfig) -> None:
        await run_benchmark(
            cfg, probs, backend=scripted_backend(SCRIPT), sessions=pool.session, out_dir=out, progress=False
        )

    await run(config)
    full = read(out)
    lines = (out / "records.jsonl").read_bytes().splitlines(keepends=True)
    (out / "records.jsonl").write_bytes(
        b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2]
    )  # a crash mid-write
    assert [r.id for r in benchmark_folder(out).prepare(config).values()] == [r.id for r in full[:3]]
    await run(config.model_copy(update={"concurrency": 5}))  # concurrency may change on resume
    assert essentials(read(out)) == essentials(full)
    with pytest.raises(RunError, match=r"different config \(samples: 1 -> 2; temperature: 0.0 -> 0.7\)"):
        await run(config.model_copy(update={"samples": 2, "temperature": 0.7}))


def bench_cli(data: Path, script: Path, out: Path, *extra: str) -> list[str]:
    return [
        MATHCODER, "bench", "--data", str(data), "--backend", "scripted", "--script", str(script),
        "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def test_a_killed_run_resumes_to_the_same_records(tmp_path: Path) -> None:
    data, script = write_data(tmp_path, delay_s=0.4)
    reference = tmp_path / "reference"
    done = subprocess.run(
        bench_cli(data, script, reference, "--concurrency", "2"), env=SUBPROCESS_ENV, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["correct"] == 3

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        bench_cli(data, script, out, "--concurrency", "1"), env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    records = out / "records.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    written = records.read_bytes().count(b"\n")
    assert 2 <= written < len(ROWS), "the run was to be killed part way"

    resumed = subprocess.run(
        bench_cli(data, script, out, "--concurrency", "3"), env=SUBPROCESS_ENV, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.splitlines()[-1])["resumed"] == written
    final = read(out)
    assert len({r.id for r in final}) == len(final) == len(ROWS)
    assert essentials(final) == essentials(read(reference))

    mismatch = subprocess.run(
        bench_cli(data, script, out, "--samples", "2"), env=SUBPROCESS_ENV, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert mismatch.returncode == 2
    assert "different config (samples: 1 -> 2" in mismatch.stderr


def test_ray_workers_give_the_same_records_as_one_process(
    tmp_path: Path, problems: tuple[Path, list[Problem]]
) -> None:
    ray = pytest.importorskip("ray")
    from benchmarks.ray_run import run_benchmark_ray

    data, probs = problems
    config = config_for(data, concurrency=2)
    single = tmp_path / "single"
    proc = subprocess.run(
        bench_cli(data, tmp_path / "script.json", single, "--concurrency", "2"), env=SUBPROCESS_ENV,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        sandbox = SETTINGS.model_copy(update={"uid_base": 64300, "run_dir": SETTINGS.run_dir / "ray"})
        spec = BackendSpec("scripted", script=SCRIPT)
        summary = run_benchmark_ray(
            config, probs[:4], backend=spec, out_dir=out, workers=2, sandbox=sandbox, progress=False
        )
        assert summary.problems == 4
        assert essentials(read(out)) == essentials(read(single))[:4]
        summary = run_benchmark_ray(  # a resume: only the last two problems are solved
            config, probs, backend=spec, out_dir=out, workers=2, sandbox=sandbox, progress=False
        )
        assert summary.resumed == 4
    finally:
        ray.shutdown()
    assert essentials(read(out)) == essentials(read(single))
    assert json.loads((out / "config.json").read_text()) == json.loads((single / "config.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)  # a 135M model on a shared CPU
def test_bench_cli_with_the_default_model_on_two_gsm8k_problems(
    tmp_path: Path, load_rows: Callable[[str, str], list[dict[str, Any]]]
) -> None:
    out = tmp_path / "gsm8k"
    proc = subprocess.run(
        [MATHCODER, "bench", "--dataset", "gsm8k", "--limit", "2", "--max-tokens", "128", "--concurrency", "2",
         "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["problems"] == 2
    records = read(out)
    assert [r.id for r in records] == ["gsm8k-test-0", "gsm8k-test-1"]
    rows = {row["id"]: str(row["answer"]) for row in load_rows("gsm8k", "test")[:2]}
    for record in records:
        (sample,) = record.samples
        trace = sample.trace
        assert trace is not None and 0 < trace.metadata.usage.completion_tokens <= 128
        # The record's answer is the trace's, and its grade is the grader's verdict on the reference
        # (not the sample's own flag, which one sample makes equal by construction).
        assert record.answer == sample.answer == trace.final_answer
        assert record.reference == rows[record.id]
        graded = record.answer is not None and is_equivalent(record.answer, record.reference)
        assert record.correct == sample.correct == record.pass_at_k == graded
    shutil.rmtree(out)


def test_ray_gives_each_model_replica_its_own_gpu() -> None:
    ray = pytest.importorskip("ray")
    from runtime.batch.drive import start_actors

    class _Placed:  # defined here so that Ray ships it by value (workers cannot import tests/)
        def __init__(self, index: int) -> None:
            self.index = index

        def gpus(self) -> tuple[int, list[str]]:
            return self.index, sorted(str(g) for g in ray.get_gpu_ids())

    # Logical GPUs: Ray schedules and assigns them as it would real ones.
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        local = start_actors(ray, _Placed, BackendSpec("transformers"), None, 8, lambda i: (i,))
        placed = ray.get([a.gpus.remote() for a in local])
        assert [i for i, _ in placed] == [0, 1]  # one per GPU by default
        assert sorted(g for _, gpus in placed for g in gpus) == ["0", "1"]  # a whole GPU each
        for actor in local:
            ray.kill(actor)
        remote = start_actors(
            ray,
            _Placed,
            BackendSpec("openai", model="m", base_url="http://127.0.0.1:1/v1"),
            3,
            8,
            lambda i: (i,),
        )
        assert [gpus for _, gpus in ray.get([a.gpus.remote() for a in remote])] == [[], [], []]
        few = start_actors(ray, _Placed, None, None, 1, lambda i: (i,))  # no more actors than chunks
        assert len(few) == 1
    finally:
        ray.shutdown()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_run_wall_time_reaches_each_trajectory(tmp_path: Path, pool: KernelPool) -> None:
    # The run's wall_time_s is the loop's: a trajectory slower than it stops as wall_time.
    data, _ = write_data(tmp_path)
    slow = {q: [dict(s, delay_s=1.0) if isinstance(s, dict) else {"text": s, "delay_s": 1.0} for s in steps]
            for q, steps in SCRIPT.items()}  # fmt: skip
    probs = load_jsonl(data, dataset="data", split="test", limit=1)
    for wall, expected in ((0.2, "wall_time"), (60.0, "eos")):
        out = tmp_path / f"run-{wall}"
        await run_benchmark(
            config_for(data, wall_time_s=wall), probs, backend=scripted_backend(slow), sessions=pool.session,
            out_dir=out, progress=False,
        )  # fmt: skip
        trace = read(out)[0].samples[0].trace
        assert trace is not None and trace.metadata.stop_reason == expected


FAIL = {"text": "", "fail": True}


@pytest.mark.asyncio(loop_scope="module")
async def test_infrastructure_failures_are_retried_not_graded_and_redone_on_resume(
    tmp_path: Path, pool: KernelPool
) -> None:
    data, _ = write_data(tmp_path)
    probs = load_jsonl(data, dataset="data", split="test", limit=2)
    (q1, *_), (q2, *_) = ROWS[:2]
    config, out = config_for(data), tmp_path / "run"
    # q1: the engine fails once, then answers (a retry within the run); q2: it fails every time.
    flaky = {q1: [FAIL, eos("So \\boxed{5}.")], q2: [FAIL, FAIL, FAIL, FAIL]}
    summary = await run_benchmark(
        config, probs, backend=scripted_backend(flaky), sessions=pool.session, out_dir=out, progress=False
    )
    first, second = read(out)
    assert (first.correct, first.samples[0].attempts, first.infrastructure_failure) == (True, 2, False)
    assert second.infrastructure_failure and second.samples[0].attempts == 3  # 1 + 2 retries
    assert "fails (scripted)" in (second.samples[0].error or "")
    assert (summary.correct, summary.accuracy, summary.infrastructure_failures) == (1, 1.0, [second.id])
    report = build_report(out)
    assert (
        report.problems == 1 and report.accuracy.rate == 1.0 and report.infrastructure_failures == [second.id]
    )
    # The engine is back: a resume solves only the ungraded problem, and grades it.
    healed = {q2: [eos("So \\boxed{7}.")]}
    again = await run_benchmark(
        config, probs, backend=scripted_backend(healed), sessions=pool.session, out_dir=out, progress=False
    )
    records = read(out)
    assert [r.id for r in records] == [p.id for p in probs] and again.resumed == 1
    assert not records[1].infrastructure_failure and records[1].answer == "7"
    assert again.infrastructure_failures == [] and again.accuracy == 0.5


def test_the_run_folder_records_the_adapter_and_the_preset_it_implies(tmp_path: Path) -> None:
    """``--adapter none`` is the plain base model and its few-shot preset; without the option the
    shipped adapter and the preset it was trained with.  Both are written into the run's config."""
    from runtime.adapter import model_preset
    from runtime.settings import RuntimeSettings

    data, script = write_data(tmp_path)
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k != "MATHCODER_ADAPTER"}
    for extra, adapter in ((("--adapter", "none"), "none"), ((), "default")):
        out = tmp_path / adapter
        done = subprocess.run(
            bench_cli(data, script, out, *extra), env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        config = json.loads((out / "config.json").read_text())
        expected = model_preset(RuntimeSettings(adapter=adapter), None)
        assert (config["adapter"], config["preset"]) == (adapter, expected)
    assert model_preset(RuntimeSettings(adapter="none"), None) == "tir"
