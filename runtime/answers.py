"""Final answers as text: extraction from model text, and reading an answer that is a plain number.

This module owns turning a model's free-form solution text into the string that is graded (saying which
rule produced it), and :func:`parse_number`, which reads an answer string such as ``\\$1,080``,
``32,\\!760``, ``18 dollars``, ``45^\\circ``, ``44\\%``, ``6\\frac15`` or ``\\dfrac34`` as an exact
number. Deciding equivalence (tolerances, math-verify, the time bound) lives in :mod:`runtime.grading`.

Rules, in priority order (the first that yields a non-empty answer wins):

1. ``boxed``: the last ``\\boxed{...}`` or ``\\fbox{...}`` (braces matched, escaped ``\\{``/``\\}`` ignored),
   or the brace-less ``\\boxed 5`` form (up to the next ``$`` or end of line).
   Empty or unclosed boxes (a truncated generation) are skipped.
2. ``gsm8k``: the text after the last ``#### `` marker, to the end of its line.
3. ``answer_is``: the text after the last "the (final) answer is", to the end of its sentence
   (``$``/``\\(...\\)`` delimiters, a trailing period and markdown bold removed).
4. ``whole``: the text is itself a bare answer, not prose: one line of at most 200 characters that is a
   single token or has no word of two or more letters (``\\frac{1}{2}``, ``(1,2]``, ``x = 5``, ``Monday``).
5. ``last_number``: the last number in the text (``-3``, ``1,080``, ``2.5``, ``.5``).

Why hand-written: math-verify's ``parse`` also finds answers in text, but it returns sympy objects and
does not say which rule fired, and it has no GSM8K ``####`` rule. Extraction is a few string scans,
cheap enough to run in-process; everything that needs sympy runs in :mod:`runtime.grading`'s worker.
:func:`parse_number` is the grader's fast path: most GSM8K-style answers are plain numbers, and reading
them with a few regular expressions avoids a process round trip and sympy per item. It only accepts
what it reads unambiguously (``5 million``, ``2 pi`` or ``(1,2)`` are not numbers to it) and otherwise
returns ``None`` so that math-verify decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Extraction",
    "ExtractionRule",
    "NumericAnswer",
    "extract_answer",
    "find_last_boxed",
    "parse_number",
]

ExtractionRule = Literal["boxed", "answer_is", "gsm8k", "whole", "last_number", "none"]

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_MARKER = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"\banswer\s+is\b\s*:?", re.IGNORECASE)
# A sentence ends at a period followed by whitespace (so "3.5" survives), or at a line break.
_SENTENCE_END = re.compile(r"\.(?=\s)|\n")
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?"  # a minus sign, unless it is a binary minus ("5-3")
    r"(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?"  # 1,080 or 1080, with decimals
    r"|(?<![\w.])\.\d+"  # .5
)
_PROSE_WORD = re.compile(r"[A-Za-z]{2,}[.,;:!?]?")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))


class Extraction(BaseModel):
    """The answer found in a model's text, and the rule that found it (``none``: no answer found)."""

    model_config = ConfigDict(frozen=True)

    answer: str | None
    rule: ExtractionRule


def extract_answer(text: str) -> Extraction:
    """Extract the final answer from ``text``; priority boxed > ``####`` > answer_is > whole > last_number."""
    boxed = find_last_boxed(text)
    if boxed:
        return Extraction(answer=boxed, rule="boxed")
    for match in reversed(list(_GSM8K_MARKER.finditer(text))):
        answer = _clean_inline(match.group(1))
        if answer:
            return Extraction(answer=answer, rule="gsm8k")
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        answer = _answer_is_tail(text[match.end() :])
        if answer:
            return Extraction(answer=answer, rule="answer_is")
    bare = _clean_inline(text)
    if bare and _is_bare_answer(bare):
        return Extraction(answer=bare, rule="whole")
    numbers = _NUMBER.findall(text)
    if numbers:
        return Extraction(answer=numbers[-1], rule="last_number")
    return Extraction(answer=None, rule="none")


def _is_bare_answer(text: str) -> bool:
    tokens = text.split()
    if "\n" in text or len(text) > 200:
        return False
    return len(tokens) == 1 or not any(_PROSE_WORD.fullmatch(t) for t in tokens)


def find_last_boxed(text: str) -> str | None:
    """Content of the last non-empty, closed ``\\boxed{}``/``\\fbox{}`` (or ``\\boxed x``), else ``None``."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        content = _box_content(text, match.end())
        if content:
            return content
    return None


def _box_content(text: str, start: int) -> str | None:
    """Parse the argument of a box command whose name ends at ``start``."""
    pos = start
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if pos >= len(text):
        return None
    if text[pos] != "{":
        if pos == start:  # "\boxed5" is not LaTeX for a boxed 5 (and "\boxedx" was excluded by the regex)
            return None
        end = len(text)
        for stop in ("$", "\n"):
            found = text.find(stop, pos)
            if found != -1:
                end = min(end, found)
        return _clean_inline(text[pos:end]) or None
    depth = 0
    i = pos
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character, so \{ and \} do not count as group braces
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1 : i].strip() or None
        i += 1
    return None  # unclosed: a truncated generation


def _answer_is_tail(tail: str) -> str:
    tail = tail.lstrip()
    for delimiter_open, delimiter_close in _DELIMITERS[:4]:
        # "The answer is $x. y$." must not be cut at the period inside the math.
        if tail.startswith(delimiter_open):
            close = tail.find(delimiter_close, len(delimiter_open))
            if close != -1:
                return _clean_inline(tail[: close + len(delimiter_close)])
    end = _SENTENCE_END.search(tail)
    return _clean_inline(tail[: end.start()] if end else tail)


def _clean_inline(answer: str) -> str:
    """Strip whitespace, one trailing period and enclosing ``$``/``\\(\\)``/``\\[\\]``/``**`` delimiters."""
    previous = None
    while previous != answer:
        previous = answer
        answer = answer.strip()
        if answer.endswith(".") and not answer.endswith("..."):
            answer = answer[:-1]
        for delimiter_open, delimiter_close in _DELIMITERS:
            if (
                len(answer) >= len(delimiter_open) + len(delimiter_close)
                and answer.startswith(delimiter_open)
                and answer.endswith(delimiter_close)
            ):
                answer = answer[len(delimiter_open) : -len(delimiter_close)]
                break
    return answer


# ------------------------------------------------------------------------ reading an answer as a number

_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d*)?|\.\d+"
_FRAC_ARG = rf"\s*(?:\{{\s*([+-]?(?:{_NUM}))\s*\}}|(\d))"
_PLAIN = re.compile(rf"([+-]?)({_NUM})")
_SLASH = re.compile(rf"([+-]?)({_NUM})\s*/\s*({_NUM})")
_FRAC = re.compile(rf"([+-]?)(?:(\d+)\s*)?\\[dt]?frac{_FRAC_ARG}{_FRAC_ARG}")
_SPACING = re.compile(r"\\[!,;:> ]\s*|~")
_WHOLE_TEXT = re.compile(r"\\(?:text|textrm|textbf|mbox|mathrm)\s*\{([^{}]*)\}")
_UNIT_TEXT = re.compile(r"\s*\\(?:text|textrm|mbox|mathrm)\s*\{([^{}]*)\}(?:\s*\^\s*\{?\d\}?)?$")
_DEGREES = re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree)$")
_PERCENT = re.compile(r"\s*(?:\\%|%|\bper\s*cent)$", re.IGNORECASE)
# Unit words must be set off by a space: "5 cm" has a unit, "2xy" is a product.
_UNIT_WORDS = re.compile(r"(?<=\s)[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?)*(?:\s*\^\s*\{?\d\}?)?$")
# Words that change a number's value or are math, not units: "5 million", "2 pi", "3 and 4".
_NOT_UNITS = frozenset(
    {"pi", "sqrt", "frac", "infty", "infinity", "inf", "and", "or", "to", "times", "over", "plus", "minus"}
    | {"hundred", "thousand", "million", "billion", "trillion", "dozen"}
    | {"hundreds", "thousands", "millions", "billions", "trillions", "dozens"}
)


@dataclass(frozen=True)
class NumericAnswer:
    """An answer that is a plain number, read exactly."""

    value: Fraction
    inexact: bool
    """Written with a decimal point, so possibly rounded: compared with a tolerance."""
    percent: bool
    """Had a percent sign: also stands for ``value / 100``."""
    latex: str
    """Canonical LaTeX (``1080``, ``\\frac{31}{5}``, ``0.25``, ``44\\%``) for a symbolic comparison."""

    def candidates(self) -> tuple[Fraction, ...]:
        """The values this answer may stand for."""
        return (self.value, self.value / 100) if self.percent else (self.value,)


def _to_fraction(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _strip_units(text: str) -> tuple[str, bool]:
    """Remove trailing units, degrees and percent signs; report whether a percent sign was seen."""
    percent = False
    for _ in range(4):
        before = text
        whole = _WHOLE_TEXT.fullmatch(text)
        if whole:
            text = whole.group(1).strip()
        if match := _PERCENT.search(text):
            text, percent = text[: match.start()], True
        text = _DEGREES.sub("", text)
        if (match := _UNIT_TEXT.search(text)) and match.start() > 0:
            percent = percent or match.group(1).strip().lower() == "percent"
            text = text[: match.start()]
        if (match := _UNIT_WORDS.search(text)) and match.start() > 0:
            words = {word.rstrip(".").lower() for word in re.findall(r"[A-Za-z]+\.?", match.group(0))}
            if not words & _NOT_UNITS:
                text = text[: match.start()]
        text = text.strip()
        if text == before:
            break
    return text, percent


def parse_number(text: str) -> NumericAnswer | None:
    """Read ``text`` as a plain number (with units, ``$``, commas, percent); ``None`` if it is not one."""
    text = text.strip()
    for opening, closing in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) > len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
            text = text[len(opening) : -len(closing)].strip()
    text = _SPACING.sub("", text).replace("{,}", ",").replace("\\$", "").replace("$", "").strip()
    text, percent = _strip_units(text)
    if not text or len(text) > 200:
        return None
    sign = 1
    if match := _PLAIN.fullmatch(text):
        value, inexact = _to_fraction(match.group(2)), "." in match.group(2)
        sign = -1 if match.group(1) == "-" else 1
    elif match := _SLASH.fullmatch(text):
        numerator, denominator = match.group(2), match.group(3)
        if _to_fraction(denominator) == 0:
            return None
        value = _to_fraction(numerator) / _to_fraction(denominator)
        inexact = "." in numerator + denominator
        sign = -1 if match.group(1) == "-" else 1
    elif match := _FRAC.fullmatch(text):
        whole = match.group(2)
        numerator, denominator = match.group(3) or match.group(4), match.group(5) or match.group(6)
        if _to_fraction(denominator) == 0 or (whole and numerator.startswith(("-", "+"))):
            return None
        value = _to_fraction(numerator) / _to_fraction(denominator)
        if whole:  # mixed number: 6\frac15 is 6 + 1/5
            value += int(whole)
        inexact = "." in numerator + denominator
        sign = -1 if match.group(1) == "-" else 1
    else:
        return None
    value *= sign
    if inexact:  # positional decimal (math-verify does not read "6.72e-05"), exact when it terminates
        latex = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    elif value.denominator == 1:
        latex = str(value.numerator)
    else:
        latex = f"{'-' if value < 0 else ''}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"
    return NumericAnswer(value, inexact, percent, latex + ("\\%" if percent else ""))
