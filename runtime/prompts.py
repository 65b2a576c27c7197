"""Prompt presets per model family: which trace format, which system prompt, which worked examples.

A preset renders the prompt up to where the model starts its turn.  Formats rendered through a chat
template (Markdown TIR) go through the backend's tokenizer; the MathCoder format is its own
template.  Worked examples (few-shot) are what makes a small model write code at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.backends.base import Backend
from runtime.formats import TraceFormat, get_format
from runtime.trace import Block, CodeBlock, OutputBlock, TextBlock, Trace


@dataclass(frozen=True)
class Example:
    problem: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class PromptPreset:
    name: str
    format: str
    system: str | None
    chat: bool = True
    examples: tuple[Example, ...] = field(default_factory=tuple)

    @property
    def trace_format(self) -> TraceFormat:
        return get_format(self.format)

    def render(self, problem: str, backend: Backend) -> str:
        fmt = self.trace_format
        if self.chat:
            messages = [{"role": "system", "content": self.system}] if self.system is not None else []
            for ex in self.examples:
                messages.append({"role": "user", "content": ex.problem})
                messages.append({"role": "assistant", "content": fmt.render_blocks(ex.blocks).text})
            messages.append({"role": "user", "content": problem})
            return backend.render_chat(messages)
        shots = "".join(
            fmt.render(Trace(problem=ex.problem, system=self.system, blocks=list(ex.blocks))).text
            for ex in self.examples
        )
        return shots + fmt.render_prompt(problem, self.system)


_TIR_EXAMPLES = (
    Example(
        problem="A baker sells 23 cakes a day at $14 each. How much money does he make in a week?",
        blocks=(
            TextBlock(text="Money per day is cakes times price; a week has 7 days."),
            CodeBlock(code="per_day = 23 * 14\nweek = per_day * 7\nprint(week)"),
            OutputBlock(output="2254"),
            TextBlock(text="He makes $2254 in a week.\nThe answer is \\boxed{2254}."),
        ),
    ),
    Example(
        problem="Tom has 3 times as many marbles as Ann. Together they have 48. How many does Tom have?",
        blocks=(
            TextBlock(text="Let Ann have a marbles, so a + 3a = 48."),
            CodeBlock(code="a = 48 / 4\ntom = 3 * a\nprint(int(tom))"),
            OutputBlock(output="36"),
            TextBlock(text="Tom has 36 marbles.\nThe answer is \\boxed{36}."),
        ),
    ),
)

_TIR_SYSTEM = (
    "Solve the math problem. Write a Python code block to compute each step; "
    "its output is shown to you after the block. Put the final answer in \\boxed{}."
)

PRESETS: dict[str, PromptPreset] = {
    p.name: p
    for p in (
        PromptPreset(
            name="tir",
            format="markdown",
            system=_TIR_SYSTEM,
            examples=_TIR_EXAMPLES,
        ),
        PromptPreset(
            # What a model fine-tuned on our traces is prompted with: the same instruction, no
            # few-shot examples (the SFT view of the training data renders this system prompt).
            name="tir-sft",
            format="markdown",
            system=_TIR_SYSTEM,
        ),
        PromptPreset(
            name="qwen-tir",
            format="markdown",
            system=(
                "Please integrate natural language reasoning with programs to solve the problem above, "
                "and put your final answer within \\boxed{}."
            ),
        ),
        PromptPreset(
            name="mathcoder",
            format="mathcoder",
            system='Below is a math problem. Please solve it step by step and put your answer in "\\boxed{}".',
            chat=False,
        ),
    )
}


def get_preset(name: str) -> PromptPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown prompt preset {name!r}; choose one of {sorted(PRESETS)}") from None
