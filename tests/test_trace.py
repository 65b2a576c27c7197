"""The trace models and both text renderings: round trips, stop strings, masks, errors."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from runtime.formats import (
    FORMATS,
    MarkdownFormat,
    MathCoderFormat,
    TraceParseError,
    UnrenderableTrace,
    get_format,
)
from runtime.trace import (
    Block,
    CodeBlock,
    ExecutionStatus,
    OutputBlock,
    TextBlock,
    Trace,
    TraceMetadata,
    Usage,
)

# Characters that exercise the delimiters' neighbourhoods: backticks, pipes, angle brackets, line breaks.
_ALPHABET = st.sampled_from(
    [*list("ab1 \n\t`<|>#${}\\é"), "```", "<|text|>", "<|im_end|>", "python", "output"]
)
_STATUSES = st.sampled_from([None, *ExecutionStatus])


def _strings(min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(_ALPHABET, min_size=min_size, max_size=12).map("".join)


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    blocks: list[Block] = []
    for _ in range(draw(st.integers(0, 6))):
        prev = blocks[-1] if blocks else None
        choices = ["code"]
        if not isinstance(prev, TextBlock):
            choices.append("text")
        if isinstance(prev, CodeBlock):
            choices.append("output")
        kind = draw(st.sampled_from(choices))
        if kind == "text":
            blocks.append(TextBlock(text=draw(_strings(min_size=1))))
        elif kind == "code":
            blocks.append(CodeBlock(code=draw(_strings())))
        else:
            blocks.append(OutputBlock(output=draw(_strings()), status=draw(_STATUSES)))
    return Trace(
        problem=draw(_strings()),
        system=draw(st.none() | _strings()),
        blocks=blocks,
        final_answer=draw(st.none() | _strings()),
        metadata=TraceMetadata(model="m", timings={"total": 1.5}, usage=Usage(cells=len(blocks))),
    )


def _renderable(fmt_name: str, trace: Trace) -> bool:
    try:
        get_format(fmt_name).check(trace)
    except UnrenderableTrace:
        return False
    return True


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@settings(max_examples=400, deadline=None)
@given(trace=traces())
def test_render_then_parse_round_trips(fmt_name: str, trace: Trace) -> None:
    fmt = get_format(fmt_name)
    if not _renderable(fmt_name, trace):
        with pytest.raises(UnrenderableTrace):
            fmt.render(trace)
        return
    rendered = fmt.render(trace)
    assert fmt.parse(rendered.text) == trace.text_view()
    # A trace without what text cannot carry round-trips exactly.
    plain = trace.text_view()
    assert fmt.parse(fmt.render(plain).text) == plain


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@settings(max_examples=200, deadline=None)
@given(trace=traces())
def test_masked_spans_are_exactly_the_runtime_written_output(fmt_name: str, trace: Trace) -> None:
    if not _renderable(fmt_name, trace):
        return
    fmt = get_format(fmt_name)
    rendered = fmt.render(trace)
    outputs = [b for b in trace.blocks if isinstance(b, OutputBlock)]
    assert len(rendered.output_spans) == len(outputs)
    for (start, end), block in zip(rendered.output_spans, outputs, strict=True):
        assert rendered.text[start:end] == fmt.execution_text(block.output)
    mask = rendered.trained()
    trained = "".join(c for c, t in zip(rendered.text, mask, strict=True) if t)
    # What the model is trained on is its turn with every runtime-written span cut out.
    turn = rendered.text
    for start, end in reversed(rendered.output_spans):
        turn = turn[:start] + turn[end:]
    assert trained == turn[rendered.prompt_end :]
    assert rendered.text[: rendered.prompt_end] == fmt.render_prompt(trace.problem, trace.system)
    assert trained.endswith(fmt.end_of_turn)


EXAMPLE = Trace(
    problem="What is 2+3?",
    system="Solve with Python.",
    blocks=[
        TextBlock(text="Add them."),
        CodeBlock(code="print(2 + 3)"),
        OutputBlock(output="5", status=ExecutionStatus.OK),
        TextBlock(text="The answer is \\boxed{5}."),
    ],
    final_answer="5",
)


def test_mathcoder_rendering_matches_the_papers_layout() -> None:
    rendered = MathCoderFormat().render(EXAMPLE)
    assert rendered.text == (
        "<|system|><|text|>Solve with Python.<|endofblock|><|endofmessage|>"
        "<|user|><|text|>What is 2+3?<|endofblock|><|endofmessage|>"
        "<|assistant|><|text|>Add them.<|endofblock|><|code|>print(2 + 3)<|endofblock|>"
        "<|execution|>5<|endofblock|><|text|>The answer is \\boxed{5}.<|endofblock|><|endofmessage|>"
    )
    start, end = rendered.output_spans[0]
    assert rendered.text[start:end] == "<|execution|>5<|endofblock|>"
    assert MathCoderFormat.stop_strings == ("<|endofblock|>", "<|endofmessage|>")


def test_markdown_rendering_is_qwen_tir_in_chatml() -> None:
    rendered = MarkdownFormat().render(EXAMPLE)
    assert rendered.text == (
        "<|im_start|>system\nSolve with Python.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Add them.\n```python\nprint(2 + 3)\n```\n```output\n5\n```\nThe answer is \\boxed{5}.<|im_end|>"
    )
    start, end = rendered.output_spans[0]
    assert rendered.text[start:end] == "\n5\n```\n"
    # The model writes the ```output fence itself: that is where its generation stops.
    assert rendered.text[start - len("```output") : start] == "```output"
    assert MarkdownFormat.stop_strings == ("```output", "\n```\n")


def test_trace_json_round_trip_keeps_everything() -> None:
    again = Trace.model_validate_json(EXAMPLE.model_dump_json())
    assert again == EXAMPLE
    assert again.schema_version == 1
    assert again.blocks[2] == OutputBlock(output="5", status=ExecutionStatus.OK)


def test_trace_rejects_blocks_that_cannot_render_unambiguously() -> None:
    with pytest.raises(ValidationError, match="adjacent text blocks"):
        Trace(problem="p", blocks=[TextBlock(text="a"), TextBlock(text="b")])
    with pytest.raises(ValidationError, match="must directly follow a code block"):
        Trace(problem="p", blocks=[TextBlock(text="a"), OutputBlock(output="1")])
    with pytest.raises(ValidationError, match="schema_version"):
        Trace.model_validate({"schema_version": 2, "problem": "p"})


def test_reserved_delimiters_are_refused_with_their_place() -> None:
    trace = Trace(problem="p", blocks=[CodeBlock(code="s = '```'")])
    with pytest.raises(UnrenderableTrace, match=r"blocks\[0\] \(code\) contains the delimiter '```'"):
        MarkdownFormat().render(trace)
    assert MathCoderFormat().parse(MathCoderFormat().render(trace).text) == trace


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        (
            MathCoderFormat(),
            "<|user|><|text|>p<|endofblock|><|endofmessage|><|assistant|><|code|>x<|endofmessage|>",
            "expected a block",
        ),
        (MathCoderFormat(), "<|assistant|>", "expected <|user|>"),
        (
            MathCoderFormat(),
            "<|user|><|text|>p<|endofblock|><|endofmessage|><|assistant|><|execution|>1<|endofblock|><|endofmessage|>",
            "does not follow a code cell",
        ),
        (
            MarkdownFormat(),
            "<|im_start|>user\np<|im_end|>\n<|im_start|>assistant\n```python\nx = 1<|im_end|>",
            "not closed",
        ),
        (MarkdownFormat(), "<|im_start|>user\np<|im_end|>\n<|im_start|>assistant\nhi", "does not end with"),
        (
            MarkdownFormat(),
            "<|im_start|>user\np<|im_end|>\n<|im_start|>assistant\na```js\n<|im_end|>",
            "unexpected fence",
        ),
    ],
)
def test_malformed_text_gives_a_parse_error_with_position(fmt: object, text: str, message: str) -> None:
    assert isinstance(fmt, MathCoderFormat | MarkdownFormat)
    with pytest.raises(TraceParseError, match=re.escape(message)):
        fmt.parse(text)


def test_unknown_format_lists_the_valid_names() -> None:
    with pytest.raises(KeyError, match=r"choose one of \['markdown', 'mathcoder'\]"):
        get_format("tora")
