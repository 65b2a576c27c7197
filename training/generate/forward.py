"""A GSM8K seed's numbers and its forward computation, read back exactly (for the backward mode).

Owns: finding the numbers a question states (in digits or words, with a following percent sign)
and the values its wording implies without stating them (``question_numbers``, ``implied_values``);
reading the seed's converted calculator cells (``gsm8k_calc.convert``) back as a ``Forward``
computation evaluated in exact arithmetic (``read_forward``); and which variables depend on a stated
number (``depends``).  ``training.generate.backward`` masks one of those numbers and solves for it.
A seed this module cannot read raises ``BackwardRejected`` with a short reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from benchmarks.records import Problem
from training.generate.gsm8k_calc import ConversionError, Step, annotation_value, convert

MAX_EXPONENT = 64

# A stated number: "1,200", "48", "3.50", ".5" — not part of a word ("3rd", "x2") or a longer number.
# "3 million", "three hundred": the stated value is not the number's.
_SCALE_AFTER = r"(?!\s+(?:hundred|thousand|million|billion)\b)"
_MENTION = re.compile(rf"(?<![\w.])(\d{{1,3}}(?:,\d{{3}})+|\d+(?:\.\d+)?|\.\d+)(?![\w]|[.,]\d){_SCALE_AFTER}")
NUMBER_WORDS = tuple(
    [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ]
)
"""The small numbers as words, ``NUMBER_WORDS[n]`` is n (also what ``rephrase`` reads as numbers)."""
_TEENS = NUMBER_WORDS[2:]
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_WORD_VALUES = dict(zip(_TEENS, range(2, 21), strict=True)) | _TENS
# "one" is left out: it is as often a pronoun ("each one") as a count.  Hyphenated words are left
# out too: "two-thirds" is not two.
_WORD = re.compile(rf"(?<![\w-])({'|'.join(_WORD_VALUES)})(?![\w-]){_SCALE_AFTER}", re.IGNORECASE)
_HYPHENATED = re.compile(rf"(?<![\w-])({'|'.join(_WORD_VALUES)}|one)-[a-z]", re.IGNORECASE)
# Wording that puts a number into the computation without stating it; masking a stated number of
# the same value would turn that one into x too ("twice" becoming "x times").
_IMPLIED = (
    (2, re.compile(r"\b(?:twice|double[ds]?|doubling|half|halves|halfway|pairs?)\b", re.IGNORECASE)),
    (3, re.compile(r"\b(?:triple[ds]?|tripling|thrice|thirds?)\b", re.IGNORECASE)),
    (4, re.compile(r"\b(?:quarters?|quadruple[ds]?|fourths?)\b", re.IGNORECASE)),
    (12, re.compile(r"\bdozens?\b", re.IGNORECASE)),
    (100, re.compile(r"%|\bpercent|\bcents?\b", re.IGNORECASE)),
)
# Unit conversions: both units named means the factor may be in the computation.
_CONVERSIONS = (
    (60, "hours?", "minutes?"),
    (60, "minutes?", "seconds?"),
    (24, "days?", "hours?"),
    (7, "weeks?", "days?"),
    (52, "weeks?", "years?"),
    (12, "months?", "years?"),
    (12, "foot|feet", "inch(?:es)?"),
    (365, "years?", "days?"),
    (1000, "kilo\\w+", "(?:grams?|meters?)"),
)
_PERCENT_AFTER = re.compile(r"\s*(?:%|percent\b)")


class BackwardRejected(Exception):
    """A candidate that cannot become an example: ``reason`` is a short category, ``detail`` the case."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Mention:
    """A number stated in the question: where, as written (without ``$``), its value, and whether a
    percent sign follows it."""

    start: int
    end: int
    text: str
    value: Fraction
    percent: bool


@dataclass(frozen=True)
class Assignment:
    name: str
    expr: ast.expr


@dataclass(frozen=True)
class ForwardCell:
    prose: str  # the seed's sentence(s) about this cell's results, if any
    assignments: tuple[Assignment, ...]


@dataclass(frozen=True)
class Forward:
    """The seed's forward computation, read back from its converted cells and evaluated exactly."""

    cells: tuple[ForwardCell, ...]
    values: Mapping[str, Fraction]
    answer_name: str
    answer: Fraction


# -- numbers -----------------------------------------------------------------------------------------


def format_number(value: Fraction) -> str:
    """``72``, ``1.5``, ``-3``: the plain decimal form of a value read from decimal text."""
    if value.denominator == 1:
        return str(value.numerator)
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def question_numbers(text: str) -> list[Mention]:
    """The numbers ``text`` states, in digits or as a word ("three"), in order."""
    found = [(m, Fraction(m.group(1).replace(",", ""))) for m in _MENTION.finditer(text)]
    found += [(m, Fraction(_WORD_VALUES[m.group(1).lower()])) for m in _WORD.finditer(text)]
    found.sort(key=lambda item: item[0].start())
    return [
        Mention(m.start(1), m.end(1), m.group(1), value, _PERCENT_AFTER.match(text, m.end()) is not None)
        for m, value in found
    ]


def implied_values(question: str) -> set[Fraction]:
    """Values the question's wording implies without stating them as a maskable number."""
    values = {Fraction(v) for v, pattern in _IMPLIED if pattern.search(question)}
    values |= {
        Fraction(v)
        for v, a, b in _CONVERSIONS
        if re.search(rf"\b(?:{a})\b", question, re.IGNORECASE)
        and re.search(rf"\b(?:{b})\b", question, re.IGNORECASE)
    }
    for m in _HYPHENATED.finditer(question):
        values.add(Fraction(_WORD_VALUES.get(m.group(1).lower(), 1)))
    if re.search(r"\bone\b", question, re.IGNORECASE):
        values.add(Fraction(1))
    return values


def literal_value(node: ast.AST) -> Fraction | None:
    """The value of a number literal, else None."""
    if not isinstance(node, ast.Constant) or type(node.value) not in (int, float):
        return None
    # repr of a parsed float literal is its shortest decimal text, so 0.2 is 1/5, not the binary double.
    return Fraction(repr(node.value))


# -- the forward computation -------------------------------------------------------------------------


def _evaluate(node: ast.expr, values: Mapping[str, Fraction]) -> Fraction:
    literal = literal_value(node)
    if literal is not None:
        return literal
    if isinstance(node, ast.Name):
        if node.id not in values:
            raise BackwardRejected("unsupported", f"{node.id!r} is used before it is computed")
        return values[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _evaluate(node.operand, values)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, values), _evaluate(node.right, values)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise BackwardRejected("unsupported", f"division by zero in {ast.unparse(node)!r}")
            return left / right
        if isinstance(node.op, ast.Pow):
            # Integer powers only: anything else would be irrational, or float in plain Python.
            if right.denominator != 1 or not 0 <= right <= MAX_EXPONENT:
                raise BackwardRejected("unsupported", f"power {ast.unparse(node)!r}")
            return left ** int(right)
    raise BackwardRejected("unsupported", f"expression {ast.unparse(node)!r}")


def _prose_after(steps: Sequence[Step], i: int) -> str:
    """The prose that restates cell ``i``'s results (the text step after it that lists them), without
    the closing answer line; "" when the converter wrote none."""
    after = steps[i + 1] if i + 1 < len(steps) else None
    if after is None or after.kind != "text" or not after.expected or after.expected != steps[i].expected:
        return ""
    return "\n".join(line for line in after.content.split("\n") if "\\boxed" not in line)


def read_forward(seed: Problem) -> Forward:
    """The converted forward computation of ``seed`` and which variable holds its answer."""
    solution = seed.meta.get("solution")
    if not isinstance(solution, str) or not solution.strip():
        raise BackwardRejected(
            "no solution", "the seed has no meta['solution'] (load it with keep_solution=True)"
        )
    answer = annotation_value(seed.answer)
    if answer is None:
        raise BackwardRejected("unreadable answer", repr(seed.answer))
    row = {"id": seed.id, "question": seed.question, "answer": seed.answer, "solution": solution}
    try:
        steps = convert(row)
    except ConversionError as exc:
        raise BackwardRejected("unconvertible", str(exc)) from exc
    cells: list[ForwardCell] = []
    values: dict[str, Fraction] = {}
    order: list[str] = []
    for i, step in enumerate(steps):
        if step.kind != "code":
            continue
        assignments = []
        try:
            body = ast.parse(step.content).body
        except SyntaxError as exc:
            raise BackwardRejected("unsupported", f"cell does not parse: {exc}") from exc
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.Expr):
                continue  # the display helper and the print calls: the symbolic cells print their own way
            if not (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                raise BackwardRejected("unsupported", f"statement {ast.unparse(stmt)!r}")
            name = stmt.targets[0].id
            values[name] = _evaluate(stmt.value, values)
            order.append(name)
            assignments.append(Assignment(name, stmt.value))
        # Prose restating a wrong annotation (GSM8K has some) would contradict the printed value.
        stated = [annotation_value(e) for e in step.expected]
        computed = [values[a.name] for a in assignments]
        prose = _prose_after(steps, i) if stated == computed else ""
        cells.append(ForwardCell(prose, tuple(assignments)))
    # The last variable equal to the answer: a solution may compute a check or a side value after it.
    answer_name = next((name for name in reversed(order) if values[name] == answer), None)
    if answer_name is None:
        last = format_number(values[order[-1]]) if order else "nothing"
        raise BackwardRejected("answer not computed", f"no variable equals {seed.answer}; last is {last}")
    return Forward(tuple(cells), values, answer_name, answer)


# -- choosing the number to mask ---------------------------------------------------------------------


def _matches(node: ast.expr, mention: Mention) -> bool:
    value = literal_value(node)
    if value is None:
        return False
    return value == mention.value or (mention.percent and value == mention.value / 100)


def depends(forward: Forward, mention: Mention) -> dict[str, bool]:
    """For each variable, whether its expression reaches a literal that stands for ``mention``."""
    deps: dict[str, bool] = {}
    for cell in forward.cells:
        for a in cell.assignments:
            deps[a.name] = any(
                _matches(n, mention) or (isinstance(n, ast.Name) and deps.get(n.id, False))
                for n in ast.walk(a.expr)
                if isinstance(n, ast.expr)
            )
    return deps
