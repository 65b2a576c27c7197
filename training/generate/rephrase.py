"""The "rephrase" mode (MetaMath-style question rephrasing): same problem, new words, new traces.

For each of ``config.variants`` variants the teacher rewrites the seed question without changing
its meaning; a rewrite that loses or invents a number, comes back unchanged, or is absurdly long or
short is rejected before any trajectory is spent on it.  The teacher then solves the rewrite through
the agent loop (``config.samples`` trajectories) and only traces whose answer grades equal to the
seed's reference are kept (rejection sampling), at most ``config.keep_per_seed`` per seed.  Exact
duplicates (same prose and code) within a seed are dropped here; near duplicates are the pipeline's
business.

This module also owns what any mode that receives a teacher-written question needs:
``clean_question`` (strip the chatter around it) and ``solves`` (the teacher answered instead).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from fractions import Fraction

from benchmarks.records import Problem
from runtime.trace import Trace
from training.generate.context import GenContext
from training.generate.forward import NUMBER_WORDS
from training.generate.keep import Keeper, teacher_label
from training.generate.records import GenRecord, SeedOutcome

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
_TENS = ("thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_NUMBER_WORDS = {
    **{word: Fraction(value) for value, word in enumerate(NUMBER_WORDS)},
    **{word: Fraction(10 * tens) for tens, word in enumerate(_TENS, start=3)},
    "dozen": Fraction(12),
    "hundred": Fraction(100),
    "thousand": Fraction(1000),
}
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
# A teacher that solved (or started to solve) instead of, or after, rewriting.  Not the bare word
# "solution": mixture problems are full of salt solutions.
_SOLVES = re.compile(
    r"\\boxed|\bthe answer (?:to [^.\n]{0,40})?is\b|\banswer\s*[:=]|^\s*(?:to solve|let'?s solve|let us solve|step 1)\b",
    re.IGNORECASE | re.MULTILINE,
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


def solves(text: str) -> bool:
    """Whether a teacher-written question states or works towards its answer."""
    return _SOLVES.search(text) is not None


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
    if solves(rephrased):
        return "contains a solution", rephrased[:300]
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


async def generate(seed: Problem, ctx: GenContext) -> SeedOutcome:
    """Rephrase ``seed`` ``config.variants`` times and keep the teacher's correct traces of each rewrite."""
    cfg = ctx.config
    teacher = teacher_label(ctx)
    keeper = Keeper(seed.id, MODE, cfg.keep_per_seed)
    accepted: set[str] = set()
    # A rewrite is a few words longer or shorter than the original; twice its length is plenty.
    max_tokens = min(cfg.max_tokens, 2 * ctx.teacher.count_tokens(seed.question) + 64)
    for n in range(cfg.variants):
        if keeper.full:
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
            keeper.reject(*why)
            continue
        accepted.add(normalize(rephrased))
        problem = Problem(
            id=f"{seed.id}/{MODE}/{n}",
            question=rephrased,
            answer=seed.answer,
            dataset=seed.dataset,
            split=seed.split,
            meta={"seed_id": seed.id, "variant": n},
        )
        for j, sample in enumerate(await ctx.sample_traces(problem)):
            label = f"{problem.id}#{j}"
            wrong = (
                None
                if sample.correct
                else ("wrong answer", f"{label}: {sample.answer!r} vs reference {seed.answer!r}")
            )

            def record(trace: Trace, p: Problem = problem, n: int = n, j: int = j) -> GenRecord:
                return GenRecord(
                    id=f"{p.id}/{j}",
                    seed_id=seed.id,
                    mode=MODE,
                    question=p.question,
                    answer=seed.answer,
                    trace=trace,
                    provenance={
                        "original_question": seed.question,
                        "teacher": teacher,
                        "temperature": cfg.temperature,
                        "variant": n,
                        "sample": j,
                        "dataset": seed.dataset,
                        "split": seed.split,
                        "run_seed": cfg.seed,
                    },
                )

            keeper.offer(label, sample, wrong, record)
    return keeper.outcome()
