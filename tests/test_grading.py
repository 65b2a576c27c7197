"""Tests for runtime.grading: equivalence on real answers, the timeout, and grading a JSONL file."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from support.grading_pairs import PAIRS, Pair
from support.paths import REPO_ROOT

from benchmarks.settings import BenchmarkSettings
from runtime.answers import parse_number
from runtime.grading import (
    Comparison,
    GraderUnavailableError,
    GradingInputError,
    VerifierPool,
    compare,
    grade,
    grade_jsonl,
    is_equivalent,
)

LoadRows = Callable[[str, str], list[dict[str, Any]]]


# Hangs math-verify's verify (sympy evaluates the tower as an exact integer): checked to run > 30 s.
PATHOLOGICAL = r"9^{9^{9^{9}}}"
SLACK_S = 1.5  # killing and reaping the worker, and thread scheduling on a loaded 2-core CI machine


@pytest.fixture(scope="module")
def pool() -> Iterator[VerifierPool]:
    with VerifierPool(max_workers=2) as shared:
        yield shared


@pytest.fixture
def own_pool() -> Iterator[VerifierPool]:
    """A pool of one worker that a test may time out or kill without disturbing others."""
    with VerifierPool(max_workers=1) as single:
        single.verify("1", "1")  # start the worker, so timings below exclude start-up
        yield single


# ------------------------------------------------------------------------------------------ curated pairs


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{p.pred} vs {p.ref}" for p in PAIRS])
def test_curated_pair(pair: Pair, pool: VerifierPool) -> None:
    result = compare(pair.pred, pair.ref, pool=pool)
    assert result.equal is pair.equal, f"{pair.why} (decided by {result.method}, error={result.error})"
    assert not result.timed_out


def test_curated_table_is_real_and_balanced(load_rows: LoadRows) -> None:
    math_answers = {row["answer"] for row in load_rows("math", "test")}
    assert len(PAIRS) >= 60
    assert sum(pair.equal for pair in PAIRS) >= 20
    assert sum(not pair.equal for pair in PAIRS) >= 20
    assert [pair.ref for pair in PAIRS if pair.ref not in math_answers] == []
    assert len({(pair.pred, pair.ref) for pair in PAIRS}) == len(PAIRS)


# -------------------------------------------------------------------------------------- references, all


def test_gsm8k_references_grade_equal_to_themselves(load_rows: LoadRows, pool: VerifierPool) -> None:
    rows = load_rows("gsm8k", "test")
    assert len(rows) == 1319
    failures = []
    for row in rows:
        answer = row["answer"]
        with_commas = f"{int(answer):,}" if re.fullmatch(r"-?\d+", answer) else answer
        texts = {
            "boxed": f"So she makes ... so the answer is \\boxed{{{answer}}}.",
            "gsm8k": f"She makes 9 * 2 = 18.\n#### {answer}",
            "answer_is": f"Adding up, 3 + 4 = 7. The answer is ${with_commas}.",
        }
        for rule, text in texts.items():
            result = grade(text, answer, pool=pool)
            if not (result.correct and result.rule == rule and result.method in ("string", "numeric")):
                failures.append((row["id"], rule, result))
    assert failures == []
    assert pool.stats.timeouts == 0


def test_math_references_grade_equal_to_themselves(load_rows: LoadRows, pool: VerifierPool) -> None:
    """Render every MATH answer into model text, re-extract it, grade it against itself."""
    rows = load_rows("math", "test")
    assert len(rows) == 5000
    failures = []
    for row in rows:
        result = grade(f"... so the answer is $\\boxed{{{row['answer']}}}$.", row["answer"], pool=pool)
        if not (result.correct and result.rule == "boxed" and result.extracted == row["answer"]):
            failures.append((row["id"], result))
    assert failures == []


def _restyle(answer: str) -> str:
    r"""A different spelling of the same LaTeX (``\dfrac``→``\frac``, no ``\left``/``\right``, no ``\!``)."""
    for old, new in (
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
    ):
        answer = answer.replace(old, new)
    return re.sub(r"\\!\s*", "", answer)


def test_math_restyled_references_stay_equal(load_rows: LoadRows, pool: VerifierPool) -> None:
    """The 134 answers a restyling changes must still be equal: this goes past the string shortcut."""
    rows = load_rows("math", "test")
    changed = [row for row in rows if _restyle(row["answer"]) != row["answer"]]
    assert len(changed) == 134
    with ThreadPoolExecutor(max_workers=2) as threads:
        results = list(
            threads.map(lambda row: compare(_restyle(row["answer"]), row["answer"], pool=pool), changed)
        )
    failures = [(row["id"], row["answer"], r) for row, r in zip(changed, results, strict=True) if not r.equal]
    assert failures == []


def test_math_references_equal_under_math_verify(load_rows: LoadRows, pool: VerifierPool) -> None:
    """Every MATH answer through the math-verify worker (no string/numeric shortcut), against itself or,
    where the numeric fast path reads it, against the fast path's canonical form (so the two agree)."""
    rows = load_rows("math", "test")

    def check(answer: str) -> Comparison:
        number = parse_number(answer)
        return pool.verify(number.latex if number else answer, answer)

    with ThreadPoolExecutor(max_workers=pool.max_workers) as threads:
        results = list(threads.map(check, [row["answer"] for row in rows]))
    assert sum(parse_number(row["answer"]) is not None for row in rows) == 4054
    failures = [(row["id"], row["answer"]) for row, r in zip(rows, results, strict=True) if not r.equal]
    # math-verify cannot read a thousands separator inside \frac; the fast path can (see the curated pairs).
    assert failures == [("math-test-1598", r"\frac{12}{5,\!525}")]


# ---------------------------------------------------------------------------------------------- fast path


def test_numbers_are_decided_without_a_worker() -> None:
    closed = VerifierPool()
    closed.close()
    assert is_equivalent("$1,080", "1080", pool=closed)
    assert is_equivalent("18 dollars", r"\$18.00", pool=closed)
    assert not is_equivalent("16386.17", r"\$16,\!386.16", pool=closed)
    assert compare(r"6\frac15", "6.2", pool=closed).method == "numeric"
    with pytest.raises(GraderUnavailableError, match="closed"):
        compare(r"\sqrt{2}", r"\frac{2}{\sqrt2}", pool=closed)


def test_default_pool_is_used_without_a_pool_argument() -> None:
    assert is_equivalent(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}")
    assert not is_equivalent(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{3}}")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_timeout_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        is_equivalent("1", "2", timeout_s=bad)


def test_empty_answers_are_not_equal(pool: VerifierPool) -> None:
    assert not is_equivalent("", "", pool=pool)
    assert not is_equivalent("  ", "5", pool=pool)


# ------------------------------------------------------------------------------------------------ timeout


def test_pathological_comparison_times_out_and_the_next_call_works(
    own_pool: VerifierPool, caplog: pytest.LogCaptureFixture
) -> None:
    timeout_s = 1.0
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="runtime.grading"):
        result = compare(PATHOLOGICAL, "1", timeout_s=timeout_s, pool=own_pool)
    elapsed = time.monotonic() - start
    assert result.equal is False
    assert result.timed_out
    assert timeout_s <= elapsed < timeout_s + SLACK_S
    assert own_pool.stats.timeouts == 1
    assert "timed out" in caplog.text
    # The runaway worker was killed; the next comparison gets a fresh one and a right answer.
    assert is_equivalent(r"\frac{1}{2}\sqrt{3}", r"\frac{\sqrt{3}}{2}", pool=own_pool)
    assert own_pool.stats.workers_started == 2


def test_grade_reports_a_timeout(own_pool: VerifierPool) -> None:
    result = grade(f"so \\boxed{{{PATHOLOGICAL}}}", "1", timeout_s=0.5, pool=own_pool)
    assert (result.correct, result.timed_out, result.extracted) == (False, True, PATHOLOGICAL)


def test_timeout_works_off_the_main_thread(own_pool: VerifierPool) -> None:
    """signal.alarm cannot time out a worker thread; the process-based timeout must."""
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as threads:
        result = threads.submit(compare, PATHOLOGICAL, "1", timeout_s=1.0, pool=own_pool).result()
    assert result.timed_out and not result.equal
    assert time.monotonic() - start < 1.0 + SLACK_S


async def test_timeout_works_from_async_code(own_pool: VerifierPool) -> None:
    start = time.monotonic()
    results = await asyncio.gather(
        asyncio.to_thread(compare, PATHOLOGICAL, "1", timeout_s=1.0, pool=own_pool),
        asyncio.to_thread(compare, "3/4", "0.75", pool=own_pool),  # numeric: needs no worker, not blocked
    )
    assert [r.timed_out for r in results] == [True, False]
    assert results[1].equal
    assert time.monotonic() - start < 1.0 + SLACK_S


def test_a_dead_worker_is_reported_and_replaced(own_pool: VerifierPool) -> None:
    own_pool._idle[0].process.kill()  # a hostile death between comparisons
    result = compare(r"\sqrt{4}", r"\frac{4}{2}", pool=own_pool)
    assert result.equal is False and result.error == "worker died"
    assert own_pool.stats.crashes == 1
    assert is_equivalent(r"\sqrt{4}", r"\frac{4}{2}", pool=own_pool)


# ------------------------------------------------------------------------------------------- grade, jsonl


def test_grade_fields() -> None:
    result = grade("We get $x=3$, so the answer is \\boxed{\\dfrac{1}{2}}.", "0.5")
    assert (result.correct, result.extracted, result.rule, result.reference) == (
        True,
        r"\dfrac{1}{2}",
        "boxed",
        "0.5",
    )
    nothing = grade("I give up.", "5")
    assert (nothing.correct, nothing.extracted, nothing.rule, nothing.method) == (False, None, "none", None)


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_grade_jsonl(tmp_path: Path, pool: VerifierPool) -> None:
    records = [
        {"id": "a", "prediction": "so \\boxed{\\frac{\\sqrt{3}}{2}}", "answer": "\\frac{1}{2}\\sqrt{3}"},
        {"id": "b", "prediction": "She earns\n#### 1,080", "answer": "1080"},
        {"id": 3, "prediction": "The answer is 7.", "answer": 8},
        {"id": "d", "prediction": "no idea", "answer": "2"},
    ]
    path = _write_jsonl(
        tmp_path / "preds.jsonl",
        [json.dumps(r) for r in records[:2]] + [""] + [json.dumps(r) for r in records[2:]],
    )
    report = grade_jsonl(path, pool=pool)
    assert (report.total, report.correct, report.accuracy, report.timeouts) == (4, 2, 0.5, 0)
    assert [(r.id, r.line, r.correct, r.rule) for r in report.results] == [
        ("a", 1, True, "boxed"),
        ("b", 2, True, "gsm8k"),
        ("3", 4, False, "answer_is"),
        ("d", 5, False, "none"),
    ]


def test_grade_jsonl_custom_fields_and_empty_file(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [json.dumps({"qid": 1, "output": "#### 5", "gt": "5"})])
    report = grade_jsonl(path, pred_field="output", ref_field="gt", id_field="qid")
    assert (report.total, report.correct, report.results[0].id) == (1, 1, "1")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert grade_jsonl(empty).model_dump(include={"total", "accuracy"}) == {"total": 0, "accuracy": 0.0}


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"id": "x", "prediction": "5", "answer": ', "not valid JSON"),
        ('["not", "an", "object"]', "expected a JSON object, got list"),
        ('{"id": "x", "answer": "5"}', "missing field 'prediction'"),
        ('{"id": "x", "prediction": "5"}', "missing field 'answer'"),
        ('{"prediction": "5", "answer": "5"}', "missing field 'id'"),
        (
            '{"id": "x", "prediction": null, "answer": "5"}',
            "field 'prediction' must be a string, got NoneType",
        ),
    ],
)
def test_grade_jsonl_rejects_malformed_lines(tmp_path: Path, bad_line: str, message: str) -> None:
    good = json.dumps({"id": "ok", "prediction": "#### 5", "answer": "5"})
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, "", bad_line, good])
    with pytest.raises(GradingInputError, match=re.escape(message)) as caught:
        grade_jsonl(path)
    assert caught.value.line == 3
    assert f"bad.jsonl:3: {message}" in str(caught.value)


# ---------------------------------------------------------------------------------------------- settings


def test_settings_env_override_and_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert BenchmarkSettings().grading_timeout_s == 5.0
    monkeypatch.setenv("MATHCODER_BENCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MATHCODER_BENCH_GRADING_TIMEOUT_S", "2.5")
    settings = BenchmarkSettings()
    assert settings.resolve_data_dir(REPO_ROOT) == tmp_path.resolve()
    assert settings.grading_timeout_s == 2.5
    monkeypatch.setenv("MATHCODER_BENCH_DATA_DIR", "relative/data")
    assert BenchmarkSettings().resolve_data_dir(REPO_ROOT) == (REPO_ROOT / "relative" / "data").resolve()
    monkeypatch.setenv("MATHCODER_BENCH_GRADING_TIMEOUT_S", "0")
    with pytest.raises(ValidationError, match="grading_timeout_s"):
        BenchmarkSettings()
    for name, field in BenchmarkSettings.model_fields.items():
        assert field.description, name
