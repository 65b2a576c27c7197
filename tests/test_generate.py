"""``mathcoder generate``: the runner, the data set files, dedupe, the SFT view, teacher modes, Ray.

Real kernels throughout; the teacher is the scripted replay double (the real default model runs
in the slow tests of the modes that need one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from benchmarks.records import Problem
from runtime.adapter import model_preset
from runtime.formats import get_format
from runtime.prompts import get_preset
from runtime.settings import RuntimeSettings
from runtime.trace import CodeBlock, OutputBlock, TextBlock, Trace
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings
from training.generate.dataset import read_records
from training.generate.dedupe import ContaminationIndex, DedupeStats, dedupe
from training.generate.records import GenerateConfig, GenRecord, SeedOutcome, SftExample
from training.generate.runner import run_generation
from training.generate.sft_view import to_sft

MATHCODER = str(Path(sys.executable).parent / "mathcoder")
SETTINGS = SandboxSettings(
    pool_size=2, max_kernels=8, cell_timeout_s=5, interrupt_grace_s=1, uid_base=69100,
    run_dir=SandboxSettings().run_dir / "test-generate",
)  # fmt: skip
ENV = {
    **os.environ,
    "MATHCODER_SANDBOX_UID_BASE": "69200",
    "MATHCODER_SANDBOX_POOL_SIZE": "2",
    "MATHCODER_SANDBOX_RUN_DIR": str(SandboxSettings().run_dir / "test-generate-cli"),
}
ASYNC = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[KernelPool]:
    async with KernelPool(SETTINGS) as pool:
        yield pool


@pytest.fixture(scope="module")
def seed_file(
    tmp_path_factory: pytest.TempPathFactory, load_rows: Callable[[str, str], list[dict[str, Any]]]
) -> Path:
    rows = load_rows("gsm8k", "train")[:4]
    broken = dict(rows[0], id="broken", solution="No calculator here.\n#### 12", answer="13")
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, broken]), encoding="utf-8")
    return path


def generate_cli(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MATHCODER, "generate", *map(str, args), "--no-progress", "--decontaminate", ""],
        capture_output=True, text=True, env=ENV, timeout=timeout,
    )  # fmt: skip


def stable(path: Path) -> list[dict[str, Any]]:
    """A data set's records without wall-clock timings (everything else must repeat exactly)."""
    out = []
    for record in read_records(path / "traces.jsonl"):
        data = record.model_dump(mode="json")
        data["trace"]["metadata"]["timings"] = {}
        for cell in data["trace"]["metadata"]["cells"]:
            cell["wall_time_s"] = 0.0
        out.append(data)
    return out


def record(question: str, blocks: list[Any], mode: str = "teacher", ident: str = "a") -> GenRecord:
    trace = Trace(problem=question, blocks=blocks, final_answer="4")
    return GenRecord(id=ident, seed_id="s", mode=mode, question=question, answer="4", trace=trace)


# --------------------------------------------------------------------------------- SFT view, dedupe


def test_sft_view_masks_the_prompt_and_outputs_character_exactly() -> None:
    blocks = [
        CodeBlock(code="x = 2 + 2\nprint(x)"), OutputBlock(output="4"),
        TextBlock(text="So it is \\boxed{4}."),
    ]  # fmt: skip
    example = to_sft(record("What is 2+2?", blocks))
    preset = get_preset("tir-sft")
    rendered = get_format("markdown").render(
        Trace(problem="What is 2+2?", system=preset.system, blocks=blocks)
    )
    assert example.text == rendered.text and example.format == "markdown"
    flags = [s.train for s in example.segments for _ in s.text]
    assert flags == rendered.trained()
    assert [s.train for s in example.segments] == [False, True, False, True]
    assert preset.system is not None and preset.system in example.segments[0].text
    assert "What is 2+2?" in example.segments[0].text
    assert example.segments[2].text == "\n4\n```\n"  # the runtime wrote it: no loss on it
    assert example.segments[-1].text.endswith("\\boxed{4}.<|im_end|>")  # the model learns to stop
    assert SftExample.model_validate_json(example.model_dump_json()) == example


def test_dedupe_drops_exact_and_near_duplicates_of_the_same_question_only() -> None:
    def blocks(code: str, text: str = "So \\boxed{4}.") -> list[Any]:
        return [CodeBlock(code=code), OutputBlock(output="4"), TextBlock(text=text)]

    long = (
        "a = 2  # apples Tom picked in the morning\nb = 2  # apples Ann picked in the afternoon\n"
        "total = a + b\nprint(total)  # add the two numbers of apples in the basket"
    )
    records = [
        record("Q one?", blocks(long), ident="1"),
        record("Q one?", blocks(long.replace("a = 2", "a  =  2")), ident="2"),  # same after normalising
        record("Q one?", blocks(long.replace("basket", "box")), ident="3"),  # near: one word differs
        record("Q one?", blocks("print(2 * 2)"), ident="4"),  # a different solution
        record("Q two?", blocks(long), ident="5"),  # the same solution of another question
    ]
    stats = DedupeStats()
    assert [r.id for r in dedupe(records, stats=stats)] == ["1", "4", "5"]
    assert (stats.exact, stats.near) == (1, 1) and stats.by_mode["teacher"] == {
        "exact": 1,
        "near": 1,
        "contaminated": 0,
    }


def test_contamination_index_finds_a_shared_13_gram() -> None:
    test_q = (
        "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins."
    )
    index = ContaminationIndex([test_q])
    assert index.contaminated("Rephrased: " + test_q.upper())
    assert not index.contaminated(
        "Janet's ducks lay 20 eggs per day and she sells all of them at the market."
    )


# ------------------------------------------------------------------------------------------- runner


def test_gsm8k_calc_cli_writes_the_data_set_and_resumes_to_the_same_records(
    tmp_path: Path, seed_file: Path
) -> None:
    out = tmp_path / "calc"
    proc = generate_cli("gsm8k-calc", "--data", seed_file, "--out", out, "--concurrency", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["seeds"] == 5 and summary["seeds_with_an_example"] == 4 and summary["kept"] == 4
    card = json.loads((out / "card.json").read_text())
    assert card["rejections"] == {"final answer mismatch": 1} and card["mode"] == "gsm8k-calc"
    assert card["provenance"]["commit"] and card["throughput"]["seeds_per_s"] > 0
    assert (card["throughput"]["seeds_this_run"], card["throughput"]["resumed_seeds"]) == (5, 0)
    (rejection,) = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    assert rejection["seed_id"] == "broken" and rejection["mode"] == "gsm8k-calc"
    sft = [SftExample.model_validate_json(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [s.id for s in sft] == [r.id for r in read_records(out / "traces.jsonl")]
    assert "Data set card" in (out / "card.md").read_text()
    first = stable(out)

    # A crash after two seeds, mid-write of the third: the rerun keeps two and redoes the rest.
    lines = (out / "outcomes.jsonl").read_text().splitlines(keepends=True)
    (out / "outcomes.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    proc = generate_cli("gsm8k-calc", "--data", seed_file, "--out", out, "--concurrency", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert stable(out) == first
    # The rates count what this run did, not the seeds it resumed.
    throughput = json.loads((out / "card.json").read_text())["throughput"]
    assert (throughput["seeds_this_run"], throughput["resumed_seeds"]) == (3, 2)
    assert [SeedOutcome.model_validate_json(x).id for x in (out / "outcomes.jsonl").read_text().splitlines()] == [
        "gsm8k-train-0", "gsm8k-train-1", "gsm8k-train-2", "gsm8k-train-3", "broken"]  # fmt: skip

    changed = generate_cli("gsm8k-calc", "--data", seed_file, "--out", out, "--seed", "3")
    assert changed.returncode == 2 and "different config (seed: 0 -> 3)" in changed.stderr


def test_a_generate_run_killed_with_sigkill_resumes_to_the_same_data_set(
    tmp_path: Path, load_rows: Callable[[str, str], list[dict[str, Any]]]
) -> None:
    rows = load_rows("gsm8k", "train")[:12]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ("gsm8k-calc", "--data", seeds, "--concurrency", "1")
    whole = generate_cli(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    # The real crash: SIGKILL once two seeds are on disk, while the run is still going.
    out = tmp_path / "killed"
    outcomes = out / "outcomes.jsonl"
    proc = subprocess.Popen(
        [MATHCODER, "generate", *map(str, args), "--out", str(out), "--no-progress", "--decontaminate", ""],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (outcomes.is_file() and outcomes.read_bytes().count(b"\n") >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no seed finished in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finished = outcomes.read_bytes().count(b"\n")
    assert 2 <= finished < len(rows)
    assert not (out / "traces.jsonl").exists()  # killed before the data set was written

    again = generate_cli(*args, "--out", out)
    assert again.returncode == 0, again.stderr[-2000:]
    throughput = json.loads((out / "card.json").read_text())["throughput"]
    assert (throughput["resumed_seeds"], throughput["seeds_this_run"]) == (finished, len(rows) - finished)
    assert stable(out) == stable(tmp_path / "whole")
    assert (out / "sft.jsonl").read_text() == (tmp_path / "whole" / "sft.jsonl").read_text()


def test_bad_invocations_fail_with_a_clear_message(tmp_path: Path, seed_file: Path) -> None:
    proc = generate_cli("nonsense", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "unknown mode 'nonsense'; choose one of gsm8k-calc" in proc.stderr
    proc = generate_cli("teacher", "--data", seed_file, "--out", tmp_path / "t")
    assert proc.returncode == 2 and "mode 'teacher' needs a teacher model: pass --backend" in proc.stderr
    proc = generate_cli("gsm8k-calc", "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "m")
    assert proc.returncode == 2 and "data file not found" in proc.stderr


def eos(text: str) -> dict[str, Any]:
    return {"text": text, "eos": True}


def test_teacher_keeps_correct_distinct_traces_and_self_train_merges_with_provenance(
    tmp_path: Path, seed_file: Path
) -> None:
    data = tmp_path / "two.jsonl"
    data.write_text(
        json.dumps({"id": "p1", "question": "What is 6 * 7?", "answer": "42"}) + "\n"
        + json.dumps({"id": "p2", "question": "What is 10 - 4?", "answer": "6"}) + "\n"
    )  # fmt: skip
    solved = ["Compute.\n```python\nprint(6 * 7)\n```\n", eos("So \\boxed{42}.")]
    script = {"What is 6 * 7?": solved * 3, "What is 10 - 4?": [eos("So \\boxed{7}.")] * 3}
    (tmp_path / "script.json").write_text(json.dumps(script))
    out = tmp_path / "teacher"
    args: list[str | Path] = ["--data", data, "--out", out, "--backend", "scripted", "--script", tmp_path / "script.json",
            "--samples", "3", "--concurrency", "1"]  # fmt: skip
    proc = generate_cli("teacher", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (kept,) = read_records(out / "traces.jsonl")
    assert (
        kept.id == "p1/teacher/0" and kept.answer == "42" and kept.trace.code_cells[0].code == "print(6 * 7)"
    )
    # Without --adapter/--preset, as `mathcoder bench`: the environment's adapter and the preset it implies.
    config = json.loads((out / "config.json").read_text())
    assert config["adapter"] == (os.environ.get("MATHCODER_ADAPTER") or "default")
    assert config["preset"] == model_preset(RuntimeSettings(adapter=config["adapter"]), None)
    assert kept.provenance["teacher"] == {"backend": "scripted", "model": None, "adapter": config["adapter"]}
    assert kept.provenance["sampling"]["temperature"] == 0.7
    card = json.loads((out / "card.json").read_text())
    # Every sample is accounted for: one kept, two repeats of it, three wrong.
    assert card["rejections"] == {"wrong answer": 3, "duplicate trace": 2}
    assert card["counts"]["candidates"] == 6

    calc = tmp_path / "calc"
    assert generate_cli("gsm8k-calc", "--data", seed_file, "--out", calc, "--limit", "2").returncode == 0
    merged = tmp_path / "self-train"
    proc = generate_cli(
        "self-train", *args[:2], "--out", merged, *args[4:], "--merge-with", calc, "--adapter", "none"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((merged / "config.json").read_text())
    assert (config["adapter"], config["preset"]) == ("none", "tir")  # the plain model's own preset
    records = read_records(merged / "traces.jsonl")
    assert [r.id for r in records] == [
        "gsm8k-train-0/gsm8k-calc/0",
        "gsm8k-train-1/gsm8k-calc/0",
        "p1/self-train/0",
    ]
    assert records[0].provenance["merged_from"] == str(calc) and "merged_from" not in records[2].provenance
    assert json.loads((merged / "card.json").read_text())["counts"]["merged_in"] == 2


@ASYNC
async def test_a_ray_run_gives_the_same_records_as_one_process(
    pool: KernelPool, tmp_path: Path, seed_file: Path
) -> None:
    ray = pytest.importorskip("ray")
    from benchmarks.datasets import load_jsonl
    from training.generate.runner import run_generation_ray

    seeds: list[Problem] = load_jsonl(seed_file, id_field="id", keep_solution=True)
    config = GenerateConfig(mode="gsm8k-calc", concurrency=2)
    await run_generation(
        config, seeds, sessions=pool.session, backend=None, out_dir=tmp_path / "one", progress=False
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sandbox = SETTINGS.model_copy(update={"uid_base": 69300, "run_dir": SETTINGS.run_dir / "ray"})
        card = run_generation_ray(
            config, seeds, backend=None, out_dir=tmp_path / "ray", workers=2, sandbox=sandbox, progress=False
        )
    finally:
        ray.shutdown()
    assert card["counts"]["kept"] == 4
    assert stable(tmp_path / "ray") == stable(tmp_path / "one")


@ASYNC
async def test_lost_kernels_are_retried_reported_apart_and_redone_on_resume(
    pool: KernelPool, tmp_path: Path, seed_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel lost for a reason outside the code is the sandbox's failure, not the seed's: the seed
    is tried again; if the sandbox keeps failing it is neither kept nor rejected but reported apart,
    and a resume tries it again (runtime/failures.py)."""
    from benchmarks.datasets import load_jsonl
    from runtime.loop import CellRunner
    from sandbox.result import ExecutionResult, ExecutionStatus
    from training.generate import gsm8k_calc

    monkeypatch.setenv("MATHCODER_BENCH_RETRY_BACKOFF_S", "0")
    seeds: list[Problem] = load_jsonl(seed_file, id_field="id", keep_solution=True)[:2]
    lose = {seeds[0].id: 1, seeds[1].id: 99}  # cells to lose per seed: once; every time
    tries = dict.fromkeys(lose, 0)

    config = GenerateConfig(mode="gsm8k-calc", concurrency=1)
    real = gsm8k_calc.build_trace

    async def losing(row: Any, session: CellRunner) -> Any:
        ident = str(row.get("id"))
        tries[ident] += 1
        if tries[ident] <= lose[ident]:

            class Lost:
                async def execute(self, code: str, timeout_s: float | None = None) -> ExecutionResult:
                    lost = "the kernel was killed (SIGKILL) from outside the sandbox"
                    return ExecutionResult(status=ExecutionStatus.CRASHED, lost=lost)

            return await real(row, Lost())
        return await real(row, session)

    monkeypatch.setattr(gsm8k_calc, "build_trace", losing)
    out = tmp_path / "run"
    card = await run_generation(
        config, seeds, sessions=pool.session, backend=None, out_dir=out, progress=False
    )
    outcomes = [json.loads(line) for line in (out / "outcomes.jsonl").read_text().splitlines()]
    assert [(o["attempts"], o["infrastructure_failure"] is None, len(o["records"])) for o in outcomes] == [
        (2, True, 1),
        (3, False, 0),  # 1 + 2 retries, then reported apart: no record, no rejection
    ]
    assert "KernelLost" in outcomes[1]["infrastructure_failure"] and outcomes[1]["rejections"] == []
    assert card["infrastructure_failures"]["ids"] == [seeds[1].id]
    assert (card["counts"]["seeds"], card["counts"]["kept"], card["rejections"]) == (1, 1, {})
    lose[seeds[1].id] = 0  # the sandbox is back: a resume redoes the failed seed only
    card = await run_generation(
        config, seeds, sessions=pool.session, backend=None, out_dir=out, progress=False
    )
    assert card["infrastructure_failures"]["seeds"] == 0 and card["counts"]["kept"] == 2
    assert card["throughput"]["seeds_this_run"] == 1
