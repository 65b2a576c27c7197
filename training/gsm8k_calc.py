"""Teacher-free conversion of GSM8K train solutions into code-interleaved traces.

GSM8K solutions carry calculator annotations (``48/2 = <<48/2=24>>24 clips``).  ``convert`` turns
each annotated line into its visible prose followed by a code cell that computes every annotated
expression into a named variable (reusing earlier variables where an expression uses an earlier
result) and prints it; ``build_trace`` runs the cells in a real sandbox session, records the real
outputs, and rejects the row when an output disagrees with its annotation or the final value
disagrees with the reference answer.  Integral floats print as ints through ``show``, a helper the
first cell defines, so that ``48 / 2`` prints ``24`` as the annotation says.
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

from benchmarks.grading import is_equivalent
from runtime.trace import (
    Block,
    CellProvenance,
    CodeBlock,
    ExecutionStatus,
    OutputBlock,
    TextBlock,
    Trace,
    TraceMetadata,
    Usage,
)
from sandbox.pool import KernelPool, Session

RejectReason = Literal["parse error", "execution error", "mismatch", "final answer mismatch"]

SHOW_HELPER = "def show(x):\n    x = round(x, 6)\n    return int(x) if x == int(x) else x\n"
OUTPUT_CHARS = 2000
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


class ConversionError(ValueError):
    """A solution that ``convert`` cannot turn into cells."""


@dataclass(frozen=True)
class Step:
    """One piece of a converted solution: prose, or a code cell with the outputs it must print."""

    kind: Literal["text", "code"]
    content: str
    expected: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejection:
    """A row that did not become a trace, and why."""

    id: str
    reason: RejectReason
    detail: str = ""


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


def parse_number(text: str) -> Fraction | None:
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


def convert(row: Mapping[str, Any]) -> list[Step]:
    """Steps of one GSM8K row (pure; raises ``ConversionError`` for a solution it cannot read)."""
    solution = str(row["solution"])
    answer = final_answer(solution)
    given = _question_numbers(str(row["question"]))
    namer = _Namer()
    known: list[tuple[Fraction, str]] = []
    steps: list[Step] = []
    texts: list[str] = []
    first_cell = True

    def add_text(text: str) -> None:
        if text:
            texts.append(text)

    def flush() -> None:
        if texts:
            steps.append(Step("text", "\n".join(texts)))
            texts.clear()

    for raw in solution.split("\n"):
        line = raw.strip()
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
            value = parse_number(result)
            if value is None:
                raise ConversionError(f"annotation result is not a number: {result!r}")
            py = _reuse(pythonify(expr), known + new_known, given)
            word = _WORD_AFTER.match(line[m.end() :].lstrip("0123456789.,$%"))
            name = namer.name(word.group(1) if word else None)
            code.append(f"{name} = {py}\nprint(show({name}))")
            expected.append(result.strip())
            new_known.append((value, name))
        known.extend(new_known)
        add_text(visible)
        flush()
        steps.append(Step("code", "\n".join(code), tuple(expected)))
    add_text(f"The answer is \\boxed{{{answer}}}.")
    flush()
    return steps


def _close(printed: str, expected: str) -> bool:
    got, want = parse_number(printed), parse_number(expected)
    if got is None or want is None:
        return False
    g, w = float(got), float(want)
    return abs(g - w) <= max(ABS_TOL, REL_TOL * max(abs(g), abs(w)))


def _reject(row: Mapping[str, Any], reason: RejectReason, detail: str) -> Rejection:
    return Rejection(id=str(row.get("id", "")), reason=reason, detail=detail)


async def build_trace(row: Mapping[str, Any], session: Session) -> Trace | Rejection:
    """Run ``convert(row)``'s cells in ``session``, checking each real output against its annotation."""
    t0 = time.monotonic()
    try:
        steps = convert(row)
    except ConversionError as exc:
        return _reject(row, "parse error", str(exc))
    blocks: list[Block] = []
    cells: list[CellProvenance] = []
    values: list[str] = []
    for step in steps:
        if step.kind == "text":
            blocks.append(TextBlock(text=step.content))
            continue
        result = await session.execute(step.content)
        output = result.prompt_text(OUTPUT_CHARS)
        blocks += [CodeBlock(code=step.content), OutputBlock(output=output, status=result.status)]
        cells.append(
            CellProvenance(
                index=len(cells),
                status=result.status,
                wall_time_s=result.wall_time_s,
                output_chars=len(output),
                truncated=result.stdout_truncated or len(output) < len(result.stdout.rstrip("\n")),
                kernel_restarted=result.kernel_restarted,
            )
        )
        if result.status != ExecutionStatus.OK:
            return _reject(row, "execution error", f"cell {len(cells) - 1}: {result.status}: {output[-200:]}")
        printed = result.stdout.strip().split("\n")
        if len(printed) != len(step.expected):
            return _reject(
                row, "mismatch", f"cell {len(cells) - 1}: printed {printed!r}, expected {step.expected!r}"
            )
        for got, want in zip(printed, step.expected, strict=True):
            if not _close(got, want):
                return _reject(
                    row, "mismatch", f"cell {len(cells) - 1}: printed {got!r}, annotation says {want!r}"
                )
        values += printed
    answer = final_answer(str(row["solution"]))
    reference = str(row["answer"])
    if not is_equivalent(answer, reference):
        return _reject(row, "final answer mismatch", f"#### {answer!r} vs reference {reference!r}")
    if values and not any(is_equivalent(v, reference) for v in reversed(values)):
        return _reject(
            row, "final answer mismatch", f"no computed value equals {reference!r}; last {values[-1]!r}"
        )
    return Trace(
        problem=str(row["question"]),
        blocks=blocks,
        final_answer=answer,
        metadata=TraceMetadata(
            model=None,
            timings={"total_s": time.monotonic() - t0},
            usage=Usage(cells=len(cells)),
            source={"dataset": "gsm8k", "split": "train", "id": row.get("id"), "converter": "gsm8k_calc"},
            format="markdown",
            stop_reason="eos",
            cells=cells,
        ),
    )


async def convert_all(
    rows: Sequence[Mapping[str, Any]],
    pool: KernelPool | Callable[[], AbstractAsyncContextManager[Session]],
    concurrency: int = 8,
) -> tuple[list[Trace], list[Rejection]]:
    """Build traces for ``rows`` (one session per problem, at most ``concurrency`` at once), in order."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    sessions = pool.session if isinstance(pool, KernelPool) else pool
    gate = asyncio.Semaphore(concurrency)

    async def one(row: Mapping[str, Any]) -> Trace | Rejection:
        async with gate, sessions() as session:
            return await build_trace(row, session)

    results = await asyncio.gather(*(one(row) for row in rows))
    traces = [r for r in results if isinstance(r, Trace)]
    rejections = [r for r in results if isinstance(r, Rejection)]
    return traces, rejections
