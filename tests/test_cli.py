"""The `mathcoder` console script, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MATHCODER = str(Path(sys.executable).parent / "mathcoder")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MATHCODER, *args], capture_output=True, text=True, timeout=120)


def test_grade_decides_equal_answers_and_exits_zero() -> None:
    proc = run("grade", "--pred", "\\frac{1}{2}", "--ref", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("equal:")


def test_grade_exits_one_on_a_wrong_answer_and_reports_the_rule() -> None:
    proc = run("grade", "--pred", "so the answer is \\boxed{(1,2]}", "--ref", "(1,2)", "--json")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["correct"] is False
    assert result["extracted"] == "(1,2]"
    assert result["rule"] == "boxed"


def test_grade_file_reports_accuracy(tmp_path: Path) -> None:
    preds = tmp_path / "preds.jsonl"
    rows = [
        {"id": "a", "prediction": "#### 1,080", "answer": "1080"},
        {"id": "b", "prediction": "The answer is 7.", "answer": "8"},
    ]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run("grade", "--file", str(preds), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["total"], report["correct"], report["accuracy"]) == (2, 1, 0.5)
    assert [r["correct"] for r in report["results"]] == [True, False]


def test_grade_file_with_a_malformed_line_names_it(tmp_path: Path) -> None:
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"id": "a", "prediction": "1", "answer": "1"}\n{not json\n')
    proc = run("grade", "--file", str(preds))
    assert proc.returncode == 2
    assert f"{preds}:2:" in proc.stderr


def test_grade_without_both_answers_is_a_usage_error() -> None:
    proc = run("grade", "--pred", "1")
    assert proc.returncode == 2
    assert "--pred and --ref are both required" in proc.stderr


def test_sandbox_run_prints_the_result_as_json_and_exits_zero_even_when_the_code_fails() -> None:
    proc = run("sandbox", "run", "--json", "import os\nprint(os.getcwd())\n1/0")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "error"
    assert result["stdout"] == "/tmp\n"
    assert result["error"]["ename"] == "ZeroDivisionError"


def test_sandbox_run_exits_two_when_the_sandbox_itself_fails() -> None:
    env_run = subprocess.run(
        [MATHCODER, "sandbox", "run", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MATHCODER_SANDBOX_START_TIMEOUT_S": "0.001"},
    )
    assert env_run.returncode == 2
    assert "sandbox error" in env_run.stderr and "MATHCODER_SANDBOX_START_TIMEOUT_S" in env_run.stderr


def test_sandbox_repl_keeps_state_between_cells() -> None:
    proc = subprocess.run(
        [MATHCODER, "sandbox", "repl"],
        input="x = 6\nfor i in range(2):\n    x += i\n\nprint(x * 6)\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "42"


# Every flag, alias and variable the commands had before their options were generated from the
# settings models (the README, scripts and docs use them); a generated option must not lose one.
FLAGS_BEFORE = {
    "solve": "--model --backend --base-url --format --preset --samples --temperature --max-rounds --max-tokens --json",
    "bench": "--out --dataset --split --model --backend --base-url --preset --limit --samples --temperature "
    "--concurrency --max-rounds --max-tokens --data --question-field --answer-field --ray --ray-workers "
    "--script --progress --no-progress",
    "generate": "--out --dataset --split --data --limit --seed --samples --keep-per-seed --variants --temperature "
    "--backend --model --base-url --preset --max-rounds --max-tokens --concurrency --self-verification "
    "--no-self-verification --min-agreement --merge-with --decontaminate --sft-preset --ray --ray-workers "
    "--script --progress --no-progress",
}


def _options(name: str) -> dict[str, str]:
    """``{flag: help}`` of one ``mathcoder`` subcommand, as click sees it."""
    import typer.main

    from runtime.cli import app

    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    found: dict[str, str] = {}
    for param in command.params:
        if param.param_type_name == "option":
            for flag in [*param.opts, *param.secondary_opts]:
                found[flag] = param.help or ""
    return found


def test_generated_options_keep_every_flag_and_carry_the_models_help() -> None:
    from benchmarks.records import RunConfig
    from runtime.solve_cli import SolveOptions
    from training.generate.records import GenerateConfig

    for name, flags in FLAGS_BEFORE.items():
        options = _options(name)
        assert set(flags.split()) <= set(options), name
    for name, model, field in [
        ("solve", SolveOptions, "max_tokens"),
        ("bench", RunConfig, "question_field"),
        ("generate", GenerateConfig, "keep_per_seed"),
    ]:
        info = model.model_fields[field]
        assert (info.description or "") in _options(name)[f"--{field.replace('_', '-')}"]
        assert f"(default: {info.default})" in _options(name)[f"--{field.replace('_', '-')}"]


def test_a_generated_option_is_validated_by_its_model() -> None:
    proc = run("solve", "What is 1 + 1?", "--samples", "0")
    assert proc.returncode == 2 and "--samples: Input should be greater than or equal to 1" in proc.stderr
