"""Teacher-free conversion of GSM8K train solutions into code-interleaved traces (``gsm8k-calc``).

GSM8K solutions carry calculator annotations (``48/2 = <<48/2=24>>24 clips``).  ``convert`` turns
each annotated line into a code cell that computes every annotated expression into a named variable
(reusing earlier variables where an expression uses an earlier result) and prints it, followed by
the line's prose — so the prose states numbers the cell has just printed, the habit we want the
model to learn, instead of guessing a result before computing it.  ``build_trace`` runs the cells
in a real sandbox session and records the real outputs.  Integral floats print as ints through
``show``, a helper the first cell defines, so that ``48 / 2`` prints ``24`` as the annotation says.

Known GSM8K annotation errors are repaired where the rest of the solution proves the repair right,
and logged in the record's provenance: a calculation written without an annotation
(``20/4 = $5``) gets one; an annotation whose stated result disagrees with its own expression keeps
the computed value (the prose is corrected to it) when the final computed value still equals the
reference answer.  Everything else is rejected with its reason.  ``text_only`` renders the same
solution without annotations: the text-only control for training experiments (mode ``gsm8k-text``).
"""

from __future__ import annotations

import asyncio
import keyword
import re
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from benchmarks.records import Problem
from runtime.grading import is_equivalent
from runtime.loop import CellRunner
from runtime.trace import (
    ExecutionStatus,
    TextBlock,
    Trace,
    TraceMetadata,
    Usage,
)
from sandbox.pool import KernelPool, Session
from training.generate.cells import TraceWriter
from training.generate.context import GenContext
from training.generate.records import GenRecord, Rejection, SeedOutcome

RejectReason = Literal["parse error", "execution error", "mismatch", "final answer mismatch"]
MODE = "gsm8k-calc"

SHOW_HELPER = "def show(x):\n    x = round(x, 6)\n    return int(x) if x == int(x) else x\n"
REL_TOL = 1e-3
ABS_TOL = 1e-6

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)(?![\w.])")
_GROUPED = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEADING_ZEROS = re.compile(r"(?<![\w.])0+(?=\d)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*%")
_SAFE_EXPR = re.compile(r"^[\w\s.+\-*/()]*$")
_WORD_AFTER = re.compile(r"\s*([A-Za-z][A-Za-z'-]*)")
_STOP_TEXT = (
    "a an the and or of in on at to for per each more less than is are was were be it this that"
    " so as by from with if then which who he she they we you his her their its all total times left now extra other another"
)
_STOPWORDS = frozenset(_STOP_TEXT.split())
_RESERVED_NAMES = frozenset({"show", "print", "round", "int", "float", "sum", "min", "max", "abs"})
# An unannotated calculation stated in the prose: ``20/4 = $5``, ``4+6=10``, ``192*100=$1920``.
_OPERAND = r"\$?\d[\d,]*(?:\.\d+)?%?"
_BARE_CALC = re.compile(
    rf"(?<![\w.<=$])({_OPERAND}(?:\s*[-+*/×÷x]\s*{_OPERAND})+)\s*=\s*(\$?)(\d[\d,]*(?:\.\d+)?)(?![\w/]|\.\d)"
)


class ConversionError(ValueError):
    """A solution that ``convert`` cannot turn into cells."""


@dataclass(frozen=True)
class Step:
    """One piece of a converted solution: a code cell with the outputs it must print (``expected``),
    or prose; prose after a cell lists in ``expected`` the results it restates (the annotations')."""

    kind: Literal["text", "code"]
    content: str
    expected: tuple[str, ...] = ()
    repairs: tuple[str, ...] = ()  # "missing annotation: 20/4=5", ... (code steps)


@dataclass
class _Namer:
    used: set[str] = field(default_factory=set)
    count: int = 0

    def name(self, word: str | None) -> str:
        self.count += 1
        base = f"step_{self.count}"
        if word is not None:
            cand = re.sub(r"[^a-z_]", "_", word.lower()).strip("_")
            if (
                cand
                and cand not in _STOPWORDS
                and not keyword.iskeyword(cand)
                and cand not in _RESERVED_NAMES
            ):
                base = cand
        name, k = base, 2
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def annotation_value(text: str) -> Fraction | None:
    """The value of an annotation's result (``$1,200``, ``25%``, ``3.5``), or None."""
    cleaned = text.strip().replace("$", "").replace(",", "").rstrip("%").strip()
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def pythonify(expr: str) -> str:
    """A calculator expression as Python: ``x``/``×`` → ``*``, ``^`` → ``**``, ``50%`` → ``50/100``,
    ``$`` and thousands separators gone, leading zeros dropped."""
    out = expr.replace("$", "").replace("×", "*").replace("÷", "/").replace("^", "**")
    out = re.sub(r"(?<=[\d)\s])x(?=[\s\d(.])", "*", out)
    out = _GROUPED.sub("", out)
    out = _PERCENT.sub(r"(\1/100)", out)
    out = _LEADING_ZEROS.sub("", out)
    out = out.strip()
    if not out or not _SAFE_EXPR.match(out) or re.search(r"[A-Za-z]", out):
        raise ConversionError(f"cannot read the expression {expr!r}")
    return out


def _reuse(expr: str, known: Sequence[tuple[Fraction, str]], given: set[Fraction]) -> str:
    """``expr`` with each number literal that equals an earlier result (and is not a number the
    question states) replaced by that result's variable, the latest one first."""

    def sub(m: re.Match[str]) -> str:
        value = Fraction(m.group(1))
        if value in given:
            return m.group(0)
        for known_value, name in reversed(known):
            if known_value == value:
                return name
        return m.group(0)

    return _NUMBER.sub(sub, expr)


def _question_numbers(question: str) -> set[Fraction]:
    values: set[Fraction] = set()
    for m in _NUMBER.finditer(_GROUPED.sub("", question)):
        values.add(Fraction(m.group(1)))
    return values


def final_answer(solution: str) -> str:
    m = re.search(r"####\s*(.+?)\s*$", solution.strip())
    if m is None:
        raise ConversionError("the solution has no '#### answer' line")
    return m.group(1).replace(",", "").replace("$", "").strip()


def annotate_missing(line: str) -> tuple[str, list[str]]:
    """``line`` with an annotation added to each calculation stated without one, and the repairs.

    Only lines with no annotation at all are touched: a line that has some annotations and also a
    bare ``a*b=c`` restates an annotated result more often than it computes a new one.
    """
    if "<<" in line:
        return line, []
    repairs: list[str] = []

    def add(m: re.Match[str]) -> str:
        expr, dollar, result = m.group(1), m.group(2), m.group(3)
        clean = expr.replace("$", "").replace(" ", "")
        if m.string[m.end() : m.end() + 1] == "%":  # "100%-40%=60%": percentage points, as GSM8K annotates
            clean = clean.replace("%", "")
        repairs.append(f"missing annotation: {clean}={result}")
        return f"{expr} = {dollar}<<{clean}={result}>>{result}"

    return _BARE_CALC.sub(add, line), repairs


def text_only(solution: str) -> str:
    """The solution's prose with every annotation removed (the ``#### answer`` line dropped)."""
    lines = []
    for raw in solution.split("\n"):
        line = raw.strip()
        if line and not line.startswith("####"):
            lines.append(re.sub(r"[ \t]{2,}", " ", _ANNOTATION.sub("", line)).strip())
    return "\n".join(lines)


def convert(row: Mapping[str, Any]) -> list[Step]:
    """Steps of one GSM8K row (pure; raises ``ConversionError`` for a solution it cannot read)."""
    solution = str(row["solution"])
    answer = final_answer(solution)
    given = _question_numbers(str(row["question"]))
    namer = _Namer()
    known: list[tuple[Fraction, str]] = []
    steps: list[Step] = []
    first_cell = True

    def add_text(text: str, results: tuple[str, ...] = ()) -> None:
        # Adjacent prose is one text block (a trace has no two text blocks in a row).
        if not text:
            return
        if steps and steps[-1].kind == "text":
            last = steps[-1]
            steps[-1] = Step("text", f"{last.content}\n{text}", last.expected + results)
        else:
            steps.append(Step("text", text, results))

    for raw in solution.split("\n"):
        line, repairs = annotate_missing(raw.strip())
        if not line or line.startswith("####"):
            continue
        annotations = list(_ANNOTATION.finditer(line))
        visible = re.sub(r"[ \t]{2,}", " ", _ANNOTATION.sub("", line)).strip()
        if "<<" in visible or ">>" in visible:
            raise ConversionError(f"unbalanced annotation in {line!r}")
        if not annotations:
            add_text(visible)
            continue
        code: list[str] = [SHOW_HELPER] if first_cell else []
        first_cell = False
        expected: list[str] = []
        new_known: list[tuple[Fraction, str]] = []
        for m in annotations:
            body = m.group(1)
            if "=" not in body:
                raise ConversionError(f"annotation without a result: {body!r}")
            expr, result = body.rsplit("=", 1)
            value = annotation_value(result)
            if value is None:
                raise ConversionError(f"annotation result is not a number: {result!r}")
            py = _reuse(pythonify(expr), known + new_known, given)
            word = _WORD_AFTER.match(line[m.end() :].lstrip("0123456789.,$%"))
            name = namer.name(word.group(1) if word else None)
            code.append(f"{name} = {py}\nprint(show({name}))")
            expected.append(result.strip())
            new_known.append((value, name))
        known.extend(new_known)
        steps.append(Step("code", "\n".join(code), tuple(expected), tuple(repairs)))
        add_text(visible, tuple(expected))
    add_text(f"The answer is \\boxed{{{answer}}}.")
    return steps


def _close(printed: str, expected: str) -> bool:
    got, want = annotation_value(printed), annotation_value(expected)
    if got is None or want is None:
        return False
    g, w = float(got), float(want)
    return abs(g - w) <= max(ABS_TOL, REL_TOL * max(abs(g), abs(w)))


def _rescaled(got: str, want: str) -> bool:
    """``got`` and ``want`` differ by a power of ten (a percentage or unit read another way)."""
    g, w = annotation_value(got), annotation_value(want)
    if not g or not w:
        return False
    ratio = abs(g / w)
    return any(ratio in (Fraction(10) ** k, Fraction(1, 10**k)) for k in range(1, 7))


def _reject(row: Mapping[str, Any], reason: RejectReason, detail: str) -> Rejection:
    return Rejection(seed_id=str(row.get("id", "")), mode=MODE, reason=reason, detail=detail)


@dataclass(frozen=True)
class Converted:
    """A validated trace and the repairs its source solution needed."""

    trace: Trace
    repairs: tuple[str, ...] = ()


def _standalone(number: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){re.escape(number)}(?![\w]|\.\d)")


async def build_trace(row: Mapping[str, Any], session: CellRunner) -> Converted | Rejection:
    """Run ``convert(row)``'s cells in ``session``, checking each real output against its annotation."""
    t0 = time.monotonic()
    try:
        steps = convert(row)
    except ConversionError as exc:
        return _reject(row, "parse error", str(exc))
    out = TraceWriter(session)
    values: list[str] = []
    repairs: list[str] = []
    fixes: dict[str, str] = {}  # a wrong annotated result -> the computed one, for the prose after it
    for step in steps:
        if step.kind == "text":
            text = step.content
            for wrong in step.expected:
                if wrong in fixes:
                    text = _standalone(wrong).sub(fixes[wrong], text)
            out.text(text)
            continue
        repairs += step.repairs
        result, output = await out.run(step.content)
        where = out.where
        if result.status != ExecutionStatus.OK:
            return _reject(row, "execution error", f"{where}: {result.status}: {output[-200:]}")
        printed = result.stdout.strip().split("\n")
        if len(printed) != len(step.expected):
            return _reject(row, "mismatch", f"{where}: printed {printed!r}, expected {step.expected!r}")
        for got, want in zip(printed, step.expected, strict=True):
            if not _close(got, want):
                if _rescaled(got, want):  # 60 vs 0.6: a percent read two ways, not a wrong annotation
                    return _reject(row, "mismatch", f"{where}: printed {got!r}, annotation says {want!r}")
                fixes[want] = got
                repairs.append(f"wrong result: annotation says {want}, {where} computes {got}")
        values += printed
    answer = final_answer(str(row["solution"]))
    reference = str(row["answer"])
    if not is_equivalent(answer, reference):
        return _reject(row, "final answer mismatch", f"#### {answer!r} vs reference {reference!r}")
    if fixes and not (values and is_equivalent(values[-1], reference)):
        # A repaired computation is only trusted when it ends exactly at the reference answer.
        detail = (
            f"last computed value {values[-1]!r} is not {reference!r} after repairs: {'; '.join(repairs)}"
        )
        return _reject(row, "mismatch", detail)
    if values and not any(is_equivalent(v, reference) for v in reversed(values)):
        return _reject(
            row, "final answer mismatch", f"no computed value equals {reference!r}; last {values[-1]!r}"
        )
    trace = Trace(
        problem=str(row["question"]),
        blocks=out.blocks,
        final_answer=answer,
        metadata=TraceMetadata(
            model=None,
            timings={"total_s": time.monotonic() - t0},
            usage=Usage(cells=len(out.cells)),
            source={"dataset": "gsm8k", "split": "train", "id": row.get("id"), "converter": MODE},
            format="markdown",
            stop_reason="eos",
            cells=out.cells,
        ),
    )
    return Converted(trace, tuple(repairs))


def _row(seed: Problem) -> dict[str, Any]:
    if "solution" not in seed.meta:
        raise ConversionError(f"{seed.id}: the seed has no worked solution (meta['solution'])")
    return {
        "id": seed.id,
        "question": seed.question,
        "answer": seed.answer,
        "solution": seed.meta["solution"],
    }


async def generate(seed: Problem, ctx: GenContext) -> SeedOutcome:
    """Mode ``gsm8k-calc``: one validated code-interleaved trace for the seed, or its rejection."""
    t0 = time.monotonic()
    async with ctx.sessions() as session:
        built = await build_trace(_row(seed), session)
    if isinstance(built, Rejection):
        return SeedOutcome(id=seed.id, rejections=[built], candidates=1, wall_time_s=time.monotonic() - t0)
    record = GenRecord(
        id=f"{seed.id}/{MODE}/0",
        seed_id=seed.id,
        mode=MODE,
        question=seed.question,
        answer=seed.answer,
        trace=built.trace,
        provenance={"dataset": seed.dataset, "split": seed.split, "repairs": list(built.repairs)},
    )
    return SeedOutcome(
        id=seed.id,
        records=[record],
        candidates=1,
        repaired=int(bool(built.repairs)),
        wall_time_s=time.monotonic() - t0,
    )


async def generate_text(seed: Problem, ctx: GenContext) -> SeedOutcome:
    """Mode ``gsm8k-text``: the same solution as prose only (annotations stripped), no code — the
    control data set for training experiments."""
    row = _row(seed)
    answer = final_answer(str(row["solution"]))
    if not is_equivalent(answer, seed.answer):
        rejection = Rejection(
            seed_id=seed.id,
            mode="gsm8k-text",
            reason="final answer mismatch",
            detail=f"#### {answer!r} vs reference {seed.answer!r}",
        )
        return SeedOutcome(id=seed.id, rejections=[rejection], candidates=1)
    text = f"{text_only(row['solution'])}\nThe answer is \\boxed{{{answer}}}."
    trace = Trace(
        problem=seed.question,
        blocks=[TextBlock(text=text)],
        final_answer=answer,
        metadata=TraceMetadata(
            source={"dataset": seed.dataset, "split": seed.split, "id": seed.id},
            format="markdown",
            stop_reason="eos",
        ),
    )
    record = GenRecord(
        id=f"{seed.id}/gsm8k-text/0",
        seed_id=seed.id,
        mode="gsm8k-text",
        question=seed.question,
        answer=seed.answer,
        trace=trace,
        provenance={"dataset": seed.dataset, "split": seed.split},
    )
    return SeedOutcome(id=seed.id, records=[record], candidates=1)


async def convert_all(
    rows: Sequence[Mapping[str, Any]],
    pool: KernelPool | Callable[[], AbstractAsyncContextManager[Session]],
    concurrency: int = 8,
) -> tuple[list[Converted], list[Rejection]]:
    """Build traces for ``rows`` (one session per problem, at most ``concurrency`` at once), in order."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    sessions = pool.session if isinstance(pool, KernelPool) else pool
    gate = asyncio.Semaphore(concurrency)

    async def one(row: Mapping[str, Any]) -> Converted | Rejection:
        async with gate, sessions() as session:
            return await build_trace(row, session)

    results = await asyncio.gather(*(one(row) for row in rows))
    converted = [r for r in results if isinstance(r, Converted)]
    rejections = [r for r in results if isinstance(r, Rejection)]
    return converted, rejections
