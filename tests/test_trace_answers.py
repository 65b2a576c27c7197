"""Every real reference answer survives being written into a trace, rendered, parsed and graded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from runtime.answers import extract_answer
from runtime.formats import FORMATS, get_format
from runtime.grading import is_equivalent
from runtime.trace import CodeBlock, OutputBlock, TextBlock, Trace

LoadRows = Callable[[str, str], list[dict[str, Any]]]


def _trace(question: str, answer: str) -> Trace:
    return Trace(
        problem=question,
        blocks=[
            TextBlock(text="Let me compute it."),
            CodeBlock(code=f"answer = {answer!r}\nprint(answer)"),
            OutputBlock(output=answer),
            TextBlock(text=f"So the final answer is $\\boxed{{{answer}}}$."),
        ],
    )


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@pytest.mark.parametrize(("dataset", "split"), [("gsm8k", "test"), ("math", "test")])
def test_reference_answers_grade_equal_after_render_and_parse(
    load_rows: LoadRows, fmt_name: str, dataset: str, split: str
) -> None:
    fmt = get_format(fmt_name)
    rows = load_rows(dataset, split)
    failures = []
    for row in rows:
        trace = _trace(row["question"], row["answer"])
        parsed = fmt.parse(fmt.render(trace).text)
        assert parsed == trace.text_view()
        last = parsed.blocks[-1]
        assert isinstance(last, TextBlock)
        extracted = extract_answer(last.text)
        if (
            extracted.rule != "boxed"
            or extracted.answer is None
            or not is_equivalent(extracted.answer, row["answer"])
        ):
            failures.append((row["id"], extracted))
    assert len(rows) == {"gsm8k": 1319, "math": 5000}[dataset]
    assert failures == []
