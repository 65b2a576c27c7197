"""Backward questions (MetaMath's FOBAR and self-verification) as code-interleaved traces.

This module owns the "backward" generation mode: from a GSM8K train seed it masks one number that
the question states as ``x`` and asks for it back, given the original answer.

* FOBAR: the masked question plus "If we know the answer to the above question is A, what is the
  value of unknown variable x?".
* Self-verification (SV, ``options["self_verification"]``): a teacher restates the masked question
  and its answer as one declarative statement, followed by "What is the value of unknown variable x?".

Both get the same solution trace, derived without a teacher from the seed's calculator annotations
(``gsm8k_calc.convert``): the forward computation is rebuilt cell by cell with ``x`` a positive
sympy symbol in place of the masked literal, in exact arithmetic (decimals and divisions of plain
integers become ``Rational``), and a last cell solves ``Eq(<result>, A)`` for ``x``.  The cells run
in a real sandbox session and every output block is what they printed; a candidate is kept only
when the printed solution is exactly ``[<masked number>]``.  Candidates that fail become logged
``Rejection`` rows (reason ``"fobar: ..."`` or ``"sv: ..."``), never exceptions; a broken sandbox or
teacher still raises.

Options (``GenerateConfig.options``): ``self_verification`` (bool, default False);
``attempts`` (int, default ``variants + 2``): most masks tried per seed.
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from benchmarks.records import Problem
from runtime.loop import CellRunner
from runtime.trace import (
    Block,
    CellProvenance,
    ExecutionStatus,
    Trace,
    TraceMetadata,
    Usage,
)
from training.generate.cells import TraceWriter
from training.generate.context import GenContext
from training.generate.gsm8k_calc import ConversionError, Step, convert, parse_number
from training.generate.records import GenRecord, Rejection, SeedOutcome

MODE = "backward"
X = "x"
FOBAR_SUFFIX = (
    "If we know the answer to the above question is {answer}, what is the value of unknown variable x?"
)
SV_SUFFIX = "What is the value of unknown variable x?"
SV_MAX_TOKENS = 256
MAX_EXPONENT = 64

# A stated number: "1,200", "48", "3.50", ".5" — not part of a word ("3rd", "x2") or a longer number.
# "3 million", "three hundred": the stated value is not the number's.
_SCALE_AFTER = r"(?!\s+(?:hundred|thousand|million|billion)\b)"
_MENTION = re.compile(rf"(?<![\w.])(\d{{1,3}}(?:,\d{{3}})+|\d+(?:\.\d+)?|\.\d+)(?![\w]|[.,]\d){_SCALE_AFTER}")
_TEENS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen",
          "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")  # fmt: skip
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
    (60, "hours?", "minutes?"), (60, "minutes?", "seconds?"), (24, "days?", "hours?"), (7, "weeks?", "days?"),
    (52, "weeks?", "years?"), (12, "months?", "years?"), (12, "foot|feet", "inch(?:es)?"),
    (365, "years?", "days?"), (1000, "kilo\\w+", "(?:grams?|meters?)"),
)  # fmt: skip
_PERCENT_AFTER = re.compile(r"\s*(?:%|percent\b)")
_X_TOKEN = re.compile(r"(?<![A-Za-z0-9_])x(?![A-Za-z0-9_])")
_FLOAT_OUTPUT = re.compile(r"\d\.\d")
# Names the symbolic cells define themselves; a forward variable with one of them is renamed.
_RESERVED = frozenset({X, "Eq", "Rational", "solve", "symbols", "solution"})


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


def _number(node: ast.AST) -> Fraction | None:
    """The value of a number literal, else None."""
    if not isinstance(node, ast.Constant) or type(node.value) not in (int, float):
        return None
    # repr of a parsed float literal is its shortest decimal text, so 0.2 is 1/5, not the binary double.
    return Fraction(repr(node.value))


# -- the forward computation -------------------------------------------------------------------------


def _evaluate(node: ast.expr, values: Mapping[str, Fraction]) -> Fraction:
    literal = _number(node)
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
    answer = parse_number(seed.answer)
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
        stated = [parse_number(e) for e in step.expected]
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
    value = _number(node)
    if value is None:
        return False
    return value == mention.value or (mention.percent and value == mention.value / 100)


def _depends(forward: Forward, mention: Mention) -> dict[str, bool]:
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


def maskable(question: str, forward: Forward) -> tuple[list[Mention], list[str]]:
    """The question's numbers that can be masked (in question order), and why each other one cannot."""
    mentions = question_numbers(question)
    counts: dict[Fraction, int] = {}
    for m in mentions:
        counts[m.value] = counts.get(m.value, 0) + 1
    implied = implied_values(question)
    ok: list[Mention] = []
    skipped: list[str] = []
    for m in mentions:
        around = question[max(m.start - 1, 0) : m.end + 1]
        if counts[m.value] > 1:
            note = f"{format_number(m.value)}: stated {counts[m.value]} times"
            skipped += [] if note in skipped else [note]
        elif m.value in implied:
            skipped.append(f"{m.text}: the wording implies {format_number(m.value)} elsewhere")
        elif m.value <= 0:
            skipped.append(f"{m.text}: not positive")
        elif m.value == forward.answer:
            skipped.append(f"{m.text}: equals the answer")
        elif "/" in around:
            skipped.append(f"{m.text}: part of a fraction")
        elif not _depends(forward, m)[forward.answer_name]:
            skipped.append(f"{m.text}: the answer's computation does not use it")
        else:
            ok.append(m)
    return ok, skipped


def mask_question(question: str, mention: Mention) -> str:
    return question[: mention.start] + X + question[mention.end :]


def fobar_question(masked: str, answer: Fraction) -> str:
    return f"{masked.rstrip()}\n{FOBAR_SUFFIX.format(answer=format_number(answer))}"


# -- the symbolic cells ------------------------------------------------------------------------------


def _call(func: str, *args: ast.expr) -> ast.expr:
    return ast.Call(func=ast.Name(func), args=list(args), keywords=[])


def _rewrite(
    node: ast.expr, mention: Mention, symbolic: set[str], rename: Mapping[str, str]
) -> tuple[ast.expr, bool]:
    """``node`` with the masked literal as ``x``, and whether its value is a sympy object.

    Plain Python ints stay ints (they print the same); a division of two plain values and every
    decimal literal become ``Rational`` so that no float ever reaches sympy.
    """
    value = _number(node)
    if isinstance(node, ast.Constant) and value is not None:
        if value == mention.value:
            return ast.Name(X), True
        if mention.percent and value == mention.value / 100:
            return ast.BinOp(ast.Name(X), ast.Div(), ast.Constant(100)), True
        if isinstance(node.value, float):
            return _call("Rational", ast.Constant(format_number(value))), True
        return ast.Constant(node.value), False
    if isinstance(node, ast.Name):
        return ast.Name(rename.get(node.id, node.id)), node.id in symbolic
    if isinstance(node, ast.UnaryOp):
        operand, sym = _rewrite(node.operand, mention, symbolic, rename)
        return ast.UnaryOp(node.op, operand), sym
    if isinstance(node, ast.BinOp):
        left, lsym = _rewrite(node.left, mention, symbolic, rename)
        right, rsym = _rewrite(node.right, mention, symbolic, rename)
        if isinstance(node.op, ast.Div) and not (lsym or rsym):
            return _call("Rational", left, right), True
        return ast.BinOp(left, node.op, right), lsym or rsym
    raise BackwardRejected("unsupported", f"expression {ast.unparse(node)!r}")


def _renames(forward: Forward) -> dict[str, str]:
    names = {a.name for cell in forward.cells for a in cell.assignments}
    rename = {}
    for name in sorted(names & _RESERVED):
        new, k = f"{name}_value", 2
        while new in names or new in _RESERVED:
            new, k = f"{name}_value_{k}", k + 1
        rename[name] = new
        names.add(new)
    return rename


def _sympy_value(value: Fraction) -> str:
    return format_number(value) if value.denominator == 1 else f"Rational('{format_number(value)}')"


def _merge_text(steps: list[Step]) -> list[Step]:
    merged: list[Step] = []
    for step in steps:
        if step.kind == "text" and merged and merged[-1].kind == "text":
            merged[-1] = Step("text", f"{merged[-1].content}\n{step.content}")
        else:
            merged.append(step)
    return merged


def backward_steps(forward: Forward, mention: Mention) -> list[Step]:
    """Text and code of the backward solution (pure): the forward cells with ``x`` for the masked
    literal, then a cell that solves for ``x``.  ``Step.expected`` is unused here."""
    rename = _renames(forward)
    deps = _depends(forward, mention)
    # Values that change with x: prose quoting one of them (or the masked number) is no longer true.
    moving = {v for name, v in forward.values.items() if deps[name]} | {mention.value}
    symbolic: set[str] = set()
    answer = format_number(forward.answer)
    steps = [
        Step(
            "text",
            f"Let me put x in place of the unknown number, redo the computation with x as a symbol, "
            f"and then solve for x using the known result, {answer}.",
        )
    ]
    for cell in forward.cells:
        lines: list[str] = []
        for a in cell.assignments:
            expr, sym = _rewrite(a.expr, mention, symbolic, rename)
            if sym:
                symbolic.add(a.name)
            name = rename.get(a.name, a.name)
            lines += [f"{name} = {ast.unparse(expr)}", f"print({name})"]
        if any(deps[a.name] for a in cell.assignments):
            names = ", ".join(rename.get(a.name, a.name) for a in cell.assignments)
            steps += [Step("text", f"Now {names} in terms of x:"), Step("code", "\n".join(lines))]
            continue
        steps.append(Step("code", "\n".join(lines)))
        if cell.prose and not any(m.value in moving for m in question_numbers(cell.prose)):
            steps.append(Step("text", cell.prose))
    target = rename.get(forward.answer_name, forward.answer_name)
    solve_code = f"solution = solve(Eq({target}, {_sympy_value(forward.answer)}), {X})\nprint(solution)"
    steps += [
        Step("text", f"The result is known to be {answer}, so solve {target} = {answer} for x."),
        Step("code", solve_code),
    ]
    codes = [s.content for s in steps if s.kind == "code"]
    imports = ["Eq", *(["Rational"] if any("Rational(" in c for c in codes) else []), "solve", "symbols"]
    header = f"from sympy import {', '.join(imports)}\n{X} = symbols('{X}', positive=True)\n"
    first = next(i for i, s in enumerate(steps) if s.kind == "code")
    steps[first] = Step("code", header + steps[first].content)
    value = format_number(mention.value)
    steps.append(Step("text", f"The value of x is {value}.\nThe answer is \\boxed{{{value}}}."))
    return _merge_text(steps)


async def run_steps(
    steps: Sequence[Step], session: CellRunner, mention: Mention
) -> tuple[list[Block], list[CellProvenance]]:
    """Run the code steps in ``session`` and check what they printed: exact values only, and the last
    cell's solution exactly ``[<masked number>]``."""
    writer = TraceWriter(session)
    output = ""
    for step in steps:
        if step.kind == "text":
            writer.text(step.content)
            continue
        result, output = await writer.run(step.content)
        if result.status != ExecutionStatus.OK:
            raise BackwardRejected("execution error", f"{writer.where}: {result.status}: {output[-200:]}")
        if _FLOAT_OUTPUT.search(output):
            raise BackwardRejected("inexact arithmetic", f"{writer.where} printed {output[-200:]!r}")
    m = re.fullmatch(r"\[(.*)\]", output.strip())
    found = [s.strip() for s in m.group(1).split(",")] if m and m.group(1).strip() else []
    if len(found) != 1:
        raise BackwardRejected("no unique solution", f"solve printed {output[-200:]!r}")
    try:
        value = Fraction(found[0])
    except (ValueError, ZeroDivisionError):
        value = None
    if value != mention.value:
        raise BackwardRejected("wrong solution", f"x = {found[0]}, the masked number is {mention.text}")
    return writer.blocks, writer.cells


# -- self-verification -------------------------------------------------------------------------------

_SV_SYSTEM = (
    "You turn a math word problem and its answer into one declarative statement. The problem has an "
    "unknown number written as x: keep x exactly as it is and keep every other number of the problem. "
    "Replace the question with a sentence that states the answer. Reply with the statement only."
)
_SV_SHOTS = (
    (
        "A baker makes x loaves every morning and sells 35 of them before noon. "
        "How many loaves are left at noon?",
        "13",
        "A baker makes x loaves every morning and sells 35 of them before noon, so 13 loaves are left at noon.",
    ),
    (
        "Omar buys 4 notebooks at $x each and pays with a $20 bill. How much change does he get?",
        "8",
        "Omar buys 4 notebooks at $x each and pays with a $20 bill, and he gets $8 in change.",
    ),
)


def _sv_user(question: str, answer: str) -> str:
    return f"Problem: {question}\nAnswer: {answer}"


def sv_messages(masked_question: str, answer: Fraction) -> list[dict[str, str]]:
    """The teacher's chat: instructions, two worked rewrites, then the masked question and its answer."""
    messages = [{"role": "system", "content": _SV_SYSTEM}]
    for question, shot_answer, statement in _SV_SHOTS:
        messages += [
            {"role": "user", "content": _sv_user(question, shot_answer)},
            {"role": "assistant", "content": statement},
        ]
    messages.append({"role": "user", "content": _sv_user(masked_question, format_number(answer))})
    return messages


def _normal(text: str) -> str:
    return " ".join(text.split()).lower()


def check_statement(
    reply: str, *, masked_question: str, original_question: str, mention: Mention, answer: Fraction
) -> str:
    """The teacher's statement (its first paragraph, label dropped), or ``BackwardRejected``."""
    text = reply.strip()
    text = re.sub(r"^(?:statement|answer)\s*:\s*", "", text, flags=re.IGNORECASE)
    statement = " ".join(re.split(r"\n\s*\n", text, maxsplit=1)[0].split())
    if not statement:
        raise BackwardRejected("empty statement")
    if _normal(statement) in (_normal(masked_question), _normal(original_question)):
        raise BackwardRejected("copied the question", statement[:200])
    if statement.endswith("?"):
        raise BackwardRejected("not a statement", statement[:200])
    if not _X_TOKEN.search(statement):
        raise BackwardRejected("missing x", statement[:200])
    values = {m.value for m in question_numbers(statement)}
    if mention.value in values:
        raise BackwardRejected("leaked masked number", f"{mention.text} in {statement[:200]!r}")
    if answer not in values:
        raise BackwardRejected("missing answer", f"{format_number(answer)} not in {statement[:200]!r}")
    lost = [m.text for m in question_numbers(masked_question) if m.value not in values]
    if lost:
        raise BackwardRejected("dropped a number", f"{', '.join(lost)} not in {statement[:200]!r}")
    return statement


# -- the mode ----------------------------------------------------------------------------------------


def _trace(
    problem: str, blocks: list[Block], cells: list[CellProvenance], seed: Problem, kind: str, answer: str,
    timings: dict[str, float],
) -> Trace:  # fmt: skip
    return Trace(
        problem=problem,
        blocks=blocks,
        final_answer=answer,
        metadata=TraceMetadata(
            timings=timings,
            usage=Usage(cells=len(cells)),
            source={
                "dataset": seed.dataset,
                "split": seed.split,
                "id": seed.id,
                "generator": MODE,
                "kind": kind,
            },
            format="markdown",
            stop_reason="eos",
            cells=cells,
        ),
    )


def choose_masks(seed: Problem, ctx: GenContext) -> tuple[Forward, list[Mention]]:
    """The seed's forward computation and its maskable numbers in the order this run tries them
    (a shuffle that depends only on the run seed and the seed id)."""
    forward = read_forward(seed)
    chosen, skipped = maskable(seed.question, forward)
    if not chosen:
        raise BackwardRejected("no maskable number", "; ".join(skipped) or "the question states no number")
    ctx.rng(seed.id, "fobar").shuffle(chosen)
    return forward, chosen


async def generate(seed: Problem, ctx: GenContext) -> SeedOutcome:
    """FOBAR (and, with ``options["self_verification"]``, SV) examples of one seed problem."""
    t0 = time.monotonic()
    cfg = ctx.config
    self_verification = bool(cfg.options.get("self_verification", False))
    if self_verification:
        _ = ctx.teacher  # fail before any work when SV has no teacher (TeacherRequired)
    attempts = int(cfg.options.get("attempts", cfg.variants + 2))
    outcome = SeedOutcome(id=seed.id)

    def reject(kind: str, exc: BackwardRejected, mention: Mention | None = None) -> None:
        detail = f"x = {mention.text}: {exc.detail}" if mention else exc.detail
        outcome.rejections.append(
            Rejection(seed_id=seed.id, mode=MODE, reason=f"{kind}: {exc.reason}", detail=detail)
        )

    def record(kind: str, n: int, question: str, trace: Trace, mention: Mention, **extra: object) -> None:
        provenance = {"kind": kind, "masked": mention.text, "original_answer": seed.answer,
                      "original_question": seed.question, "dataset": seed.dataset, "split": seed.split,
                      "run_seed": cfg.seed, **extra}  # fmt: skip
        outcome.records.append(
            GenRecord(
                id=f"{seed.id}/{kind}/{n}",
                seed_id=seed.id,
                mode=MODE,
                question=question,
                answer=format_number(mention.value),
                trace=trace,
                provenance=provenance,
            )
        )

    def finish() -> SeedOutcome:
        outcome.candidates = len(outcome.records) + len(outcome.rejections)
        outcome.wall_time_s = time.monotonic() - t0
        return outcome

    try:
        forward, chosen = choose_masks(seed, ctx)
    except BackwardRejected as exc:
        reject("fobar", exc)
        return finish()
    kept = 0
    async with ctx.sessions() as session:
        for mention in chosen[:attempts]:
            if kept >= cfg.variants:
                break
            n, c0 = kept, time.monotonic()
            masked = mask_question(seed.question, mention)
            question = fobar_question(masked, forward.answer)
            answer = format_number(mention.value)
            try:
                blocks, cells = await run_steps(backward_steps(forward, mention), session, mention)
            except BackwardRejected as exc:
                reject("fobar", exc, mention)
                continue
            kept += 1
            timings = {"total_s": time.monotonic() - c0}
            trace = _trace(question, blocks, cells, seed, "fobar", answer, timings)
            record("fobar", n, question, trace, mention)
            if not self_verification:
                continue
            c1 = time.monotonic()
            messages = sv_messages(masked, forward.answer)
            # Only the first paragraph is kept: stop there rather than pay for the rest.
            reply = await ctx.complete(
                messages, max_tokens=SV_MAX_TOKENS, key=(seed.id, "sv", n), stop=("\n\n",)
            )
            try:
                statement = check_statement(
                    reply, masked_question=masked, original_question=seed.question, mention=mention,
                    answer=forward.answer,
                )  # fmt: skip
            except BackwardRejected as exc:
                reject("sv", exc, mention)
                continue
            sv_question = f"{statement} {SV_SUFFIX}"
            teacher_s = time.monotonic() - c1
            timings = {"total_s": timings["total_s"] + teacher_s, "teacher_s": teacher_s}
            teacher = {"backend": cfg.backend, "model": cfg.model, "temperature": cfg.temperature}
            sv_trace = _trace(sv_question, blocks, cells, seed, "sv", answer, timings)
            record("sv", n, sv_question, sv_trace, mention, teacher=teacher, teacher_reply=reply)
    return finish()
