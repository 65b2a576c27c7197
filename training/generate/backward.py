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
from training.generate.forward import (
    BackwardRejected,
    Forward,
    Mention,
    depends,
    format_number,
    implied_values,
    literal_value,
    question_numbers,
    read_forward,
)
from training.generate.gsm8k_calc import Step
from training.generate.records import GenRecord, Rejection, SeedOutcome

MODE = "backward"
X = "x"
FOBAR_SUFFIX = (
    "If we know the answer to the above question is {answer}, what is the value of unknown variable x?"
)
SV_SUFFIX = "What is the value of unknown variable x?"
SV_MAX_TOKENS = 256
_X_TOKEN = re.compile(r"(?<![A-Za-z0-9_])x(?![A-Za-z0-9_])")
_FLOAT_OUTPUT = re.compile(r"\d\.\d")
# Names the symbolic cells define themselves; a forward variable with one of them is renamed.
_RESERVED = frozenset({X, "Eq", "Rational", "solve", "symbols", "solution"})


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
        elif not depends(forward, m)[forward.answer_name]:
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
    value = literal_value(node)
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
    deps = depends(forward, mention)
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
    problem: str,
    blocks: list[Block],
    cells: list[CellProvenance],
    seed: Problem,
    kind: str,
    answer: str,
    timings: dict[str, float],
) -> Trace:
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
        provenance = {
            "kind": kind,
            "masked": mention.text,
            "original_answer": seed.answer,
            "original_question": seed.question,
            "dataset": seed.dataset,
            "split": seed.split,
            "run_seed": cfg.seed,
            **extra,
        }
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
                    reply,
                    masked_question=masked,
                    original_question=seed.question,
                    mention=mention,
                    answer=forward.answer,
                )
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
