"""The "rephrase" mode (MetaMath-style question rephrasing): same problem, new words, new traces.

For each of ``config.variants`` variants the teacher rewrites the seed question without changing
its meaning; a rewrite that loses or invents a number, comes back unchanged, or is absurdly long or
short is rejected before any trajectory is spent on it.  The teacher then solves the rewrite through
the agent loop (``config.samples`` trajectories) and only traces whose answer grades equal to the
seed's reference are kept (rejection sampling), at most ``config.keep_per_seed`` per seed.  Exact
duplicates (same prose and code) within a seed are dropped here; near duplicates are the pipeline's
business.

This module also owns the small helpers that any mode which receives a teacher-written question
needs: ``clean_question`` (strip the chatter around it) and ``trace_key`` (what "exact duplicate"
means for a trace).
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from fractions import Fraction

from benchmarks.records import Problem, SampleRecord
from runtime.trace import CodeBlock, TextBlock, Trace
from training.generate.context import GenContext
from training.generate.records import GenRecord, Rejection, SeedOutcome

MODE = "rephrase"

SYSTEM = "You rewrite math word problems in new words. You never solve them."
INSTRUCTION = (
    "Rewrite the math problem below in your own words. Keep its meaning exactly: keep every number, "
    "every quantity and every condition, and ask for the same thing, so that the answer stays the "
    "same. Change the wording and sentence structure only. Do not solve it and do not add hints. "
    "Reply with the rewritten problem only.\n\n"
    "Problem:\n{question}"
)

# Number words a rewrite may use for a digit of the original ("5 apples" -> "five apples").  Only
# accepted in the rewrite, never required of it: "one" and "no one" are too often not numbers.
_SMALL_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)  # fmt: skip
_TENS = ("thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_NUMBER_WORDS = {
    **{word: Fraction(value) for value, word in enumerate(_SMALL_NUMBERS)},
    **{word: Fraction(10 * tens) for tens, word in enumerate(_TENS, start=3)},
    "dozen": Fraction(12), "hundred": Fraction(100), "thousand": Fraction(1000),
}  # fmt: skip
# Digits with optional thousands groups and decimals; a sentence's final "." is not a decimal.
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\d)")
_WORD = re.compile(r"[a-z]+")
# A first line like "Here is the rewritten problem:" or a "Rephrased question:" prefix.
_LEAD_IN = re.compile(
    r"^\s*(?:\*\*)?(?:(?:sure|okay|ok)[,!.]?\s*)?(?:here\s+is|here's)?[^\n:.?!]{0,40}?"
    r"\b(?:problem|question|version|rewrite|rephrasing|paraphrase)\s*(?:\*\*)?\s*:(?:\*\*)?[ \t]*",
    re.IGNORECASE,
)
# Where a teacher that went on to solve, or to comment, starts doing so.
_TAIL = re.compile(
    r"^\s*(?:\*\*)?(?:answer|solution|original(?: problem| question)?|note|explanation|step 1)\b.*",
    re.IGNORECASE | re.MULTILINE | re.DOTALL,
)
_QUOTES = "\"'`“”‘’"


def clean_question(text: str) -> str:
    """A teacher-written question without the lead-in, the surrounding quotes, or a solution after it."""
    text = text.strip()
    text = _LEAD_IN.sub("", text, count=1)
    text = _TAIL.sub("", text).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text)


def normalize(text: str) -> str:
    """Whitespace and case folded: what "the same text" means when comparing questions."""
    return " ".join(text.split()).casefold()


def numbers(text: str, *, words: bool = False) -> set[Fraction]:
    """The numbers written in ``text`` (``1,200`` and ``1200.0`` are one), and number words if asked."""
    found = {Fraction(m.group(1).replace(",", "") + (m.group(2) or "")) for m in _NUMBER.finditer(text)}
    if words:
        found |= {_NUMBER_WORDS[w] for w in _WORD.findall(text.lower()) if w in _NUMBER_WORDS}
    return found


def _show(values: set[Fraction]) -> str:
    return ", ".join(str(v) if v.denominator == 1 else str(float(v)) for v in sorted(values))


def check_rephrase(original: str, rephrased: str, earlier: Collection[str] = ()) -> tuple[str, str] | None:
    """Why ``rephrased`` is not a usable rewrite of ``original`` — ``(reason, detail)`` — or None.

    ``earlier`` holds the normalized rewrites already accepted for this seed.
    """
    if not rephrased:
        return "empty", ""
    norm = normalize(rephrased)
    if norm == normalize(original):
        return "unchanged", ""
    if norm in earlier:
        return "duplicate rephrase", ""
    if "\\boxed" in rephrased:
        return "contains a solution", rephrased[:200]
    missing = numbers(original) - numbers(rephrased, words=True)
    if missing:
        return "number dropped", f"missing {_show(missing)}: {rephrased[:300]}"
    added = numbers(rephrased) - numbers(original, words=True)
    if added:  # a number the original never states changes the problem (or leaks a result)
        return "number added", f"new {_show(added)}: {rephrased[:300]}"
    if len(rephrased) > 2.5 * len(original) + 200:
        return "too long", f"{len(rephrased)} chars for a {len(original)}-char original"
    if len(rephrased) < 0.3 * len(original):
        return "too short", f"{len(rephrased)} chars for a {len(original)}-char original: {rephrased}"
    return None


def trace_key(trace: Trace) -> tuple[tuple[str, str], ...]:
    """What two traces must share to be exact duplicates: their prose and code, in order (outputs
    follow from the code, metadata differs on every run)."""
    return tuple(
        ("text", b.text) if isinstance(b, TextBlock) else ("code", b.code)
        for b in trace.blocks
        if isinstance(b, TextBlock | CodeBlock)
    )


def sample_failure(sample: SampleRecord) -> tuple[str, str] | None:
    """Why a trajectory has no usable trace whatever its answer — ``(reason, detail)`` — or None."""
    if sample.error is not None or sample.trace is None:
        return "trajectory error", (sample.error or "no trace")[:300]
    if sample.answer is None:
        return "no answer", ""
    return None


def teacher_label(ctx: GenContext) -> str:
    cfg = ctx.config
    return f"{cfg.backend}/{cfg.model}" if cfg.model else ctx.teacher.name


async def generate(seed: Problem, ctx: GenContext) -> SeedOutcome:
    """Rephrase ``seed`` ``config.variants`` times and keep the teacher's correct traces of each rewrite."""
    started = time.monotonic()
    cfg = ctx.config
    teacher = teacher_label(ctx)
    records: list[GenRecord] = []
    rejections: list[Rejection] = []
    seen_traces: set[tuple[tuple[str, str], ...]] = set()
    accepted: set[str] = set()

    def reject(reason: str, detail: str = "") -> None:
        rejections.append(Rejection(seed_id=seed.id, mode=MODE, reason=reason, detail=detail))

    # A rewrite is a few words longer or shorter than the original; twice its length is plenty.
    max_tokens = min(cfg.max_tokens, 2 * ctx.teacher.count_tokens(seed.question) + 64)
    for n in range(cfg.variants):
        if len(records) >= cfg.keep_per_seed:
            break  # later variants could only add rejections
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": INSTRUCTION.format(question=seed.question)},
        ]
        # A teacher failure (server down) propagates: the seed is unfinished, not rejected, and a
        # resumed run retries it.
        raw = await ctx.complete(messages, max_tokens=max_tokens, key=(seed.id, MODE, n))
        rephrased = clean_question(raw)
        why = check_rephrase(seed.question, rephrased, accepted)
        if why is not None:
            reject(*why)
            continue
        accepted.add(normalize(rephrased))
        problem = Problem(
            id=f"{seed.id}/{MODE}/{n}", question=rephrased, answer=seed.answer,
            dataset=seed.dataset, split=seed.split, meta={"seed_id": seed.id, "variant": n},
        )  # fmt: skip
        for j, sample in enumerate(await ctx.sample_traces(problem)):
            failure = sample_failure(sample)
            if failure is not None:
                reject(*failure)
                continue
            assert sample.trace is not None
            if not sample.correct:
                reject("wrong answer", f"{problem.id}#{j}: {sample.answer!r} vs reference {seed.answer!r}")
                continue
            key = trace_key(sample.trace)
            if key in seen_traces:
                reject("duplicate trace", f"{problem.id}#{j}")
                continue
            if len(records) >= cfg.keep_per_seed:
                reject("keep_per_seed reached", f"{problem.id}#{j}")
                continue
            seen_traces.add(key)
            record = GenRecord(
                id=f"{problem.id}/{j}", seed_id=seed.id, mode=MODE, question=rephrased,
                answer=seed.answer, trace=sample.trace,
                provenance={
                    "original_question": seed.question, "teacher": teacher,
                    "temperature": cfg.temperature, "variant": n, "sample": j,
                    "dataset": seed.dataset, "split": seed.split, "run_seed": cfg.seed,
                },
            )  # fmt: skip
            records.append(record)
    return SeedOutcome(
        id=seed.id,
        records=records,
        rejections=rejections,
        candidates=len(records) + len(rejections),
        wall_time_s=round(time.monotonic() - started, 3),
    )
