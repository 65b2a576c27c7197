"""Tests for runtime.answers: each extraction rule, its priority, and real MATH/GSM8K solutions."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest

from runtime.answers import Extraction, NumericAnswer, extract_answer, find_last_boxed, parse_number

LoadRows = Callable[[str, str], list[dict[str, Any]]]


# ------------------------------------------------------------------------------------------------ boxed


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"So the answer is $\boxed{5}$.", "5"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),  # nested braces
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not close the box
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),  # an unbalanced \{ inside is fine
        (r"first \boxed{1}, then \boxed{2}", "2"),  # the last box wins
        (r"\fbox{7} is it", "7"),
        (r"\boxed {8}", "8"),  # space before the brace
        (r"The answer is $\boxed 5$.", "5"),  # brace-less form, up to the next $
        ("\\boxed 42.\nDone", "42"),  # brace-less form, up to the end of the line, period dropped
        (r"\boxed{ 3 }", "3"),
        (r"\boxed{\text{(A)}}", r"\text{(A)}"),
    ],
)
def test_boxed(text: str, answer: str) -> None:
    assert extract_answer(text) == Extraction(answer=answer, rule="boxed")


def test_boxed_skips_unclosed_and_empty_boxes() -> None:
    assert extract_answer(r"\boxed{4} and then a truncated \boxed{\frac{1}{") == Extraction(
        answer="4", rule="boxed"
    )
    assert extract_answer(r"\boxed{4} \boxed{}") == Extraction(answer="4", rule="boxed")
    assert find_last_boxed(r"\boxed{\frac{1}{2}") is None
    assert find_last_boxed(r"\boxed5") is None  # not LaTeX for a boxed 5
    assert find_last_boxed(r"\boxedanswer{5}") is None


def test_nested_boxes_give_the_innermost_last_box() -> None:
    assert extract_answer(r"\boxed{\boxed{9}}") == Extraction(answer="9", rule="boxed")


# ------------------------------------------------------------------------------------------------ gsm8k


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,080", "1,080"),
        ("#### -3\n", "-3"),
        ("#### 5\nsome trailing chatter with 7", "5"),
        ("#### 1\n#### 2", "2"),
    ],
)
def test_gsm8k(text: str, answer: str) -> None:
    assert extract_answer(text) == Extraction(answer=answer, rule="gsm8k")


# --------------------------------------------------------------------------------------------- answer is


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("So the answer is 12.", "12"),
        ("The answer is $\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("The final answer is 3.5.", "3.5"),
        ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),  # Minerva format
        ("The answer is: **42**", "42"),
        ("The answer is \\(x^2\\). Next, we", "x^2"),
        ("The answer is $x. y$.", "x. y"),  # a period inside math does not end the sentence
        ("The answer is 7 apples\nand more text 9", "7 apples"),
        ("An answer is 3 but the answer is 4.", "4"),  # the last one
    ],
)
def test_answer_is(text: str, answer: str) -> None:
    assert extract_answer(text) == Extraction(answer=answer, rule="answer_is")


# ------------------------------------------------------------------------------------------ bare answers


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("\\frac{1}{2}", "\\frac{1}{2}"),  # not "2", the last number in it
        ("  (1,2]  ", "(1,2]"),
        ("$x = -4$", "x = -4"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("Monday", "Monday"),
        ("0.5", "0.5"),
    ],
)
def test_a_bare_answer_is_taken_whole(text: str, answer: str) -> None:
    assert extract_answer(text) == Extraction(answer=answer, rule="whole")


# ------------------------------------------------------------------------------------------- last number


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("I think it is 3, or maybe 17", "17"),
        ("The total is 1,080 eggs", "1,080"),
        ("costs 1,000, so", "1,000"),
        ("so x = -4", "-4"),
        ("compute 5-3 now", "3"),  # a binary minus is not a sign
        ("about 2.75 meters.", "2.75"),
        ("roughly .5", ".5"),
    ],
)
def test_last_number(text: str, answer: str) -> None:
    assert extract_answer(text) == Extraction(answer=answer, rule="last_number")


def test_none() -> None:
    assert extract_answer("I do not know.") == Extraction(answer=None, rule="none")
    assert extract_answer("") == Extraction(answer=None, rule="none")
    assert extract_answer("The answer is .") == Extraction(answer=None, rule="none")


# ---------------------------------------------------------------------------------------------- priority


def test_priority_boxed_over_everything() -> None:
    text = "The answer is 3.\n#### 4\nso \\boxed{5} and 6"
    assert extract_answer(text) == Extraction(answer="5", rule="boxed")


def test_priority_gsm8k_over_answer_is() -> None:
    assert extract_answer("#### 4\nThe answer is 3. Then 6") == Extraction(answer="4", rule="gsm8k")


def test_priority_answer_is_over_last_number() -> None:
    assert extract_answer("The answer is 3. Check: 3 * 2 = 6") == Extraction(answer="3", rule="answer_is")


def test_extraction_is_frozen() -> None:
    extraction = extract_answer(r"\boxed{1}")
    with pytest.raises(ValueError, match="frozen"):
        extraction.answer = "2"  # type: ignore[misc]


# -------------------------------------------------------------------------------------- plain numbers


@pytest.mark.parametrize(
    ("text", "value", "percent"),
    [
        ("18", Fraction(18), False),
        ("1,080", Fraction(1080), False),
        (r"\$1,080", Fraction(1080), False),
        (r"-\$0.50", Fraction(-1, 2), False),
        ("18 dollars", Fraction(18), False),
        (r"5\text{ cm}^2", Fraction(5), False),
        (r"864 \mbox{ inches}^2", Fraction(864), False),
        (r"9\text{ a.m.}", Fraction(9), False),
        (r"30^\circ", Fraction(30), False),
        (r"45^{\circ}", Fraction(45), False),
        (r"10\%", Fraction(10), True),
        ("25 percent", Fraction(25), True),
        (r"12\text{ percent}", Fraction(12), True),
        (r"\frac{12}{5,\!525}", Fraction(12, 5525), False),
        (r"11,\! 111,\! 111,\! 100", Fraction(11_111_111_100), False),
        (r"6\frac15", Fraction(31, 5), False),
        (r"137 \frac{1}{2}", Fraction(275, 2), False),
        (r"\dfrac34", Fraction(3, 4), False),
        (r"\tfrac{3}{4}", Fraction(3, 4), False),
        (r"\frac{-4}{3}", Fraction(-4, 3), False),
        (r"-\frac12", Fraction(-1, 2), False),
        ("3/4", Fraction(3, 4), False),
        (".5", Fraction(1, 2), False),
        ("18.0", Fraction(18), False),
        (r"$\frac{1}{2}$", Fraction(1, 2), False),
        (r"\text{5 apples}", Fraction(5), False),
    ],
)
def test_parse_number(text: str, value: Fraction, percent: bool) -> None:
    number = parse_number(text)
    assert number is not None
    assert (number.value, number.percent) == (value, percent)


@pytest.mark.parametrize(
    "text",
    [
        "5 million",
        "2 pi",
        r"\frac{\pi}{4}",
        "(1,2)",
        "1,2",
        "2xy",
        "5x",
        r"\frac{1}{0}",
        "1/0",
        "",
        "1e5",
        "x = 5",
    ],
)
def test_parse_number_declines_what_is_not_a_plain_number(text: str) -> None:
    assert parse_number(text) is None


def _number(text: str) -> NumericAnswer:
    number = parse_number(text)
    assert number is not None, text
    return number


def test_parse_number_canonical_latex() -> None:
    texts = (".0000672", r"6\frac15", r"44\%", r"\$1,080", "-3/6")
    assert [_number(text).latex for text in texts] == [
        "0.0000672",
        r"\frac{31}{5}",
        r"44\%",
        "1080",
        r"-\frac{1}{2}",
    ]
    assert _number("0.25") == _number("0.250")
    assert _number("0.5").inexact and not _number(r"\frac12").inexact


# ------------------------------------------------------------------------------------------- real data


def test_math_solutions_extract_their_reference_answers(load_rows: LoadRows) -> None:
    """The data's ``answer`` is the last boxed content of ``solution``; extraction must agree on all rows."""
    rows = load_rows("math", "test") + load_rows("math", "train")
    rows = [row for row in rows if "answer_note" not in row]  # two train rows end in an empty \boxed{}
    assert len(rows) == 12_498
    wrong = [
        (row["id"], row["answer"], extraction)
        for row in rows
        if (extraction := extract_answer(row["solution"])) != Extraction(answer=row["answer"], rule="boxed")
    ]
    assert wrong == []


def test_gsm8k_solutions_extract_their_reference_answers(load_rows: LoadRows) -> None:
    rows = load_rows("gsm8k", "test") + load_rows("gsm8k", "train")
    assert len(rows) == 8_792
    wrong = [
        (row["id"], row["answer"], extraction)
        for row in rows
        if (extraction := extract_answer(row["solution"])).rule != "gsm8k"
        or (extraction.answer or "").replace(",", "") != row["answer"]
    ]
    assert wrong == []
