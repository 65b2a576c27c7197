"""Answer grading: is a prediction equal to a reference, and grading a JSONL file of predictions.

This module owns the equivalence decision and its time bound. A comparison takes the first of:

1. ``string``: the stripped strings are identical.
2. ``numeric``: both sides are plain numbers (hand-written fast path, in-process, no sympy):
   :func:`runtime.answers.parse_number` strips thousands commas, ``$``, units, degrees and reads
   ``0.5``, ``3/4``, ``\\dfrac34``, ``6\\frac15`` as exact fractions, compared exactly unless a decimal is involved:
   a decimal against a repeating fraction (``0.333333`` vs ``\\frac13``) gets relative tolerance
   :data:`NUMERIC_REL_TOL` (1e-6, about six significant digits); two terminating values get only
   :data:`FLOAT_NOISE_REL_TOL` (1e-9, for prints like ``0.30000000000000004``), so ``16386.17`` is not
   ``16386.16``. It exists because GSM8K-style grading is almost all numbers, and a process round trip
   plus sympy per item would be slow for no gain.
3. ``math_verify``: everything else (LaTeX: ``\\sqrt``, ``\\pi``, intervals, tuples, sets, matrices,
   equations, ``\\text{(A)}``) goes to the math-verify library (``parse`` of ``\\boxed{...}``, then ``verify``
   with the reference as gold). A side the fast path read as a number is passed in canonical form.

Policies (math-verify's, which the fast path follows):

* Percent: ``10\\%`` equals both ``0.1`` and ``10`` (models often drop the sign or convert).
* Degrees are a unit, not a conversion: ``30^\\circ`` equals ``30`` but not ``\\frac{\\pi}{6}``.
* Ordered pairs are ordered, ``(1,2)`` is not ``[1,2)``; unbracketed lists like ``1, 2`` are sets.
* Decimals for irrational answers are math-verify's call: equal when they agree to 6 decimal places
  (``0.785398`` is ``\\frac{\\pi}{4}``), so a rough ``6.28`` is not ``2\\pi``.
* Equivalence is not symmetric in edge cases: ``y = 2x+3`` as reference accepts ``2x+3``.

Time bound: symbolic comparisons run in :mod:`runtime.verifier`'s killable worker processes.
Calls block; from async code use ``await asyncio.to_thread(is_equivalent, ...)``.
"""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from runtime.answers import ExtractionRule, NumericAnswer, extract_answer, parse_number
from runtime.verifier import (
    DEFAULT_TIMEOUT_S,
    Comparison,
    ComparisonMethod,
    GraderUnavailableError,
    PoolStats,
    VerifierPool,
    check_timeout,
    default_pool,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FLOAT_NOISE_REL_TOL",
    "NUMERIC_REL_TOL",
    "Comparison",
    "Grade",
    "GraderUnavailableError",
    "GradingInputError",
    "GradingReport",
    "PoolStats",
    "RecordGrade",
    "VerifierPool",
    "compare",
    "default_pool",
    "grade",
    "grade_jsonl",
    "is_equivalent",
]

logger = logging.getLogger(__name__)

NUMERIC_REL_TOL = Fraction(1, 10**6)
"""Relative tolerance between a decimal and a repeating fraction (``0.333333`` vs ``1/3``)."""
FLOAT_NOISE_REL_TOL = Fraction(1, 10**9)
"""Relative tolerance between a decimal and a terminating value (float print noise only)."""


# ----------------------------------------------------------------------------------------------- errors


class GradingInputError(ValueError):
    """A predictions file has a malformed line; ``line`` is 1-based."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


# ------------------------------------------------------------------------------------------------ models


class Grade(BaseModel):
    """A graded model output: the extracted answer, the rule that found it and the verdict."""

    model_config = ConfigDict(frozen=True)

    correct: bool
    extracted: str | None
    rule: ExtractionRule
    reference: str
    method: ComparisonMethod | None = None
    """``None`` when no answer was extracted (nothing was compared)."""
    timed_out: bool = False


class RecordGrade(Grade):
    """A :class:`Grade` for one line of a predictions file."""

    id: str
    line: int


class GradingReport(BaseModel):
    """Result of :func:`grade_jsonl`."""

    path: str
    total: int
    correct: int
    accuracy: float
    timeouts: int
    results: list[RecordGrade]


# ------------------------------------------------------------------------------------ numeric fast path


def _terminates(value: Fraction) -> bool:
    """Whether ``value`` has a finite decimal expansion (its denominator is 2^a 5^b)."""
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def _numbers_equal(pred: NumericAnswer, ref: NumericAnswer) -> bool:
    tolerant = pred.inexact or ref.inexact
    for x in pred.candidates():
        for y in ref.candidates():
            if x == y:
                return True
            if tolerant:
                tolerance = FLOAT_NOISE_REL_TOL if _terminates(x) and _terminates(y) else NUMERIC_REL_TOL
                if abs(x - y) <= tolerance * max(abs(x), abs(y)):
                    return True
    return False


# ------------------------------------------------------------------------------------------ public API


def compare(
    pred: str, ref: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, pool: VerifierPool | None = None
) -> Comparison:
    """Compare an extracted answer ``pred`` with the reference ``ref`` (see the module docstring)."""
    check_timeout(timeout_s, "timeout_s")
    pred, ref = pred.strip(), ref.strip()
    if not pred or not ref:
        return Comparison(equal=False, method="string")
    if pred == ref:
        return Comparison(equal=True, method="string")
    pred_number, ref_number = parse_number(pred), parse_number(ref)
    if pred_number is not None and ref_number is not None:
        return Comparison(equal=_numbers_equal(pred_number, ref_number), method="numeric")
    return (pool or default_pool()).verify(
        pred_number.latex if pred_number else pred,
        ref_number.latex if ref_number else ref,
        timeout_s=timeout_s,
    )


def is_equivalent(
    pred: str, ref: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, pool: VerifierPool | None = None
) -> bool:
    """Whether answer ``pred`` equals reference ``ref``; a timed-out comparison is ``False``."""
    return compare(pred, ref, timeout_s=timeout_s, pool=pool).equal


def grade(
    model_text: str, ref: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, pool: VerifierPool | None = None
) -> Grade:
    """Extract the answer from ``model_text`` and compare it with ``ref``."""
    check_timeout(timeout_s, "timeout_s")
    extraction = extract_answer(model_text)
    if extraction.answer is None:
        return Grade(correct=False, extracted=None, rule=extraction.rule, reference=ref)
    result = compare(extraction.answer, ref, timeout_s=timeout_s, pool=pool)
    return Grade(
        correct=result.equal,
        extracted=extraction.answer,
        rule=extraction.rule,
        reference=ref,
        method=result.method,
        timed_out=result.timed_out,
    )


def _field(record: dict[str, Any], name: str, path: Path, line: int, *, numbers_ok: bool) -> str:
    if name not in record:
        raise GradingInputError(path, line, f"missing field {name!r} (fields present: {sorted(record)})")
    value = record[name]
    if isinstance(value, str):
        return value
    if numbers_ok and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    kind = "a string or a number" if numbers_ok else "a string"
    raise GradingInputError(path, line, f"field {name!r} must be {kind}, got {type(value).__name__}")


def grade_jsonl(
    path: str | Path,
    *,
    pred_field: str = "prediction",
    ref_field: str = "answer",
    id_field: str = "id",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    pool: VerifierPool | None = None,
) -> GradingReport:
    """Grade a JSONL file whose ``pred_field`` holds model text; the whole file is validated first.

    Blank lines are skipped. Raises :class:`GradingInputError` (with the 1-based line number) for a
    line that is not a JSON object or lacks a field.
    """
    path = Path(path)
    check_timeout(timeout_s, "timeout_s")
    records: list[tuple[int, str, str, str]] = []
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise GradingInputError(
                    path, number, f"not valid JSON: {exc.msg} (column {exc.colno})"
                ) from exc
            if not isinstance(record, dict):
                raise GradingInputError(path, number, f"expected a JSON object, got {type(record).__name__}")
            records.append(
                (
                    number,
                    _field(record, id_field, path, number, numbers_ok=True),
                    _field(record, pred_field, path, number, numbers_ok=False),
                    _field(record, ref_field, path, number, numbers_ok=True),
                )
            )
    results = [
        RecordGrade(
            id=record_id, line=number, **grade(text, ref, timeout_s=timeout_s, pool=pool).model_dump()
        )
        for number, record_id, text, ref in records
    ]
    correct = sum(result.correct for result in results)
    return GradingReport(
        path=str(path),
        total=len(results),
        correct=correct,
        accuracy=correct / len(results) if results else 0.0,
        timeouts=sum(result.timed_out for result in results),
        results=results,
    )
