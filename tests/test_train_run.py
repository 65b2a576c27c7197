"""Training runs of a tiny Llama on CPU: a pinned loss curve, packing vs padding, exact resume, the
saved model in the runtime's transformers backend, LoRA (merged and adapter), the MathCoder
format's added tokens, and the command line end to end.

The model (2 layers, width 64) and its 512-token byte-level BPE are built here from a seed; no
download.  Each run takes a few seconds on one CPU thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from safetensors.torch import load_file
from support.train import (
    SYSTEM,
    arithmetic_examples,
    build_tiny_model,
    read_results,
    sft_example,
    write_jsonl,
)
from transformers import TrainerCallback
from typer.testing import CliRunner

from runtime.backends.base import CompletionRequest
from runtime.formats.mathcoder import SPECIAL_TOKENS
from runtime.settings import RuntimeSettings
from runtime.trace import CodeBlock, OutputBlock, TextBlock, Trace
from training.encode import TrainDataError
from training.settings import TrainSettings
from training.trainer import TrainError, run_training

# Pinned with torch 2.13 (CPU, one thread) and transformers 5.23: the per-step training losses of
# `_golden_settings`.  A change beyond the tolerance means the data, the masks, the schedule or the
# loss changed; re-pin only when that was intended (TRL's invariant tests do the same).
GOLDEN_LOSSES = [6.2628, 6.2672, 5.8932, 5.6507, 5.4893, 5.4037]
GOLDEN_ATOL = 0.02


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two shared cores: torch's second thread spins against other processes and makes each step of
    # the tiny model about 20 times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", arithmetic_examples(40))


def _settings(data: Path, out: Path, model: Path, **overrides: Any) -> TrainSettings:
    base: dict[str, Any] = {
        "data": [data],
        "out": out,
        "model": str(model),
        "lr": 3e-3,
        "epochs": 2,
        "batch_size": 2,
        "max_len": 512,
        "logging_steps": 1,
        "eval_fraction": 0.1,
    }
    return TrainSettings(**(base | overrides))


def test_loss_follows_the_golden_curve(data: Path, tiny_dir: Path, tmp_path: Path) -> None:
    results = run_training(_settings(data, tmp_path / "run", tiny_dir))
    losses = [loss for _, loss in results.loss_curve]
    assert [step for step, _ in results.loss_curve] == list(range(1, len(GOLDEN_LOSSES) + 1))
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=GOLDEN_ATOL)
    assert losses[-1] < losses[0] - 0.5
    assert results.final_eval_loss is not None and results.final_eval_loss < losses[0]
    written = read_results(tmp_path / "run")
    for key in (
        "name",
        "data",
        "model",
        "steps",
        "tokens_per_s",
        "real_token_share",
        "final_train_loss",
        "final_eval_loss",
    ):
        assert key in written
    assert written["steps"] == 6 and written["name"] == "run"
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["lr"] == 3e-3


def test_a_packed_run_sees_each_example_alone(data: Path, tiny_dir: Path, tmp_path: Path) -> None:
    """The end-to-end guard on packing: one step over all 40 examples, packed into a few rows or
    padded one to a row, starts from the same loss -- which holds only if no example attends to
    its neighbours in a packed row (the golden curve's tolerance cannot tell)."""
    common = {"max_steps": 1, "batch_size": 64, "eval_fraction": 0.0}
    packed = run_training(_settings(data, tmp_path / "packed", tiny_dir, packing=True, **common))
    padded = run_training(_settings(data, tmp_path / "padded", tiny_dir, packing=False, **common))
    assert packed.rows_train < padded.rows_train == 40  # really packed: several examples a row
    assert packed.train_tokens == padded.train_tokens
    assert packed.loss_curve[0][1] == pytest.approx(padded.loss_curve[0][1], rel=1e-4)


def test_packing_fills_batches_that_padding_leaves_empty(data: Path, tiny_dir: Path, tmp_path: Path) -> None:
    # Examples of unequal length: the toy set plus longer traces of the same kind (two cells).
    mixed = arithmetic_examples(24) + [_two_cell_example(i) for i in range(12)]
    path = write_jsonl(tmp_path / "mixed.jsonl", mixed)
    common = {"max_steps": 4, "eval_fraction": 0.0, "batch_size": 4, "max_len": 256}
    packed = run_training(_settings(path, tmp_path / "packed", tiny_dir, packing=True, **common))
    padded = run_training(_settings(path, tmp_path / "padded", tiny_dir, packing=False, **common))
    assert padded.real_token_share < packed.real_token_share
    assert packed.real_token_share > 0.9
    assert packed.rows_train < padded.rows_train == 36
    for results in (packed, padded):
        assert results.tokens_per_s > 0 and results.train_tokens > 0
        assert 0 < results.real_token_share_min <= results.real_token_share <= 1


def _two_cell_example(i: int) -> Any:
    a, b, c = 10 + i, 3 + i, 2
    trace = Trace(
        problem=f"Bob has {a} boxes of {b} pens and gives away {c} boxes. How many pens are left?",
        system=SYSTEM,
        blocks=[
            TextBlock(text="First the boxes left, then the pens in them."),
            CodeBlock(code=f"boxes = {a} - {c}\nprint(boxes)"),
            OutputBlock(output=str(a - c)),
            CodeBlock(code=f"pens = boxes * {b}\nprint(pens)"),
            OutputBlock(output=str((a - c) * b)),
            TextBlock(text=f"The answer is \\boxed{{{(a - c) * b}}}."),
        ],
    )
    return sft_example(trace, "markdown", f"pens-{i}/gsm8k-calc/0")


class _StopAt(TrainerCallback):
    """Ends training after ``step`` (a crash right after that checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_continues_exactly_where_the_checkpoint_left_off(
    data: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    # Padding, 2 rows a step: 18 training examples make 9 steps an epoch, so step 3 is mid-epoch.
    common = {"max_steps": 6, "save_steps": 3, "packing": False, "eval_fraction": 0.1}
    whole = run_training(_settings(data, tmp_path / "whole", tiny_dir, **common))
    first = run_training(_settings(data, tmp_path / "split", tiny_dir, **common), callbacks=[_StopAt(3)])
    assert first.steps == 3 and (tmp_path / "split" / "checkpoints" / "checkpoint-3").is_dir()
    second = run_training(_settings(data, tmp_path / "split", tiny_dir, **common))
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-3")
    assert second.steps == 6
    assert [s for s, _ in second.loss_curve] == [s for s, _ in whole.loss_curve] == list(range(1, 7))
    assert [x for _, x in second.loss_curve] == pytest.approx([x for _, x in whole.loss_curve], rel=1e-6)
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


# `mathcoder train` (its `main`), with a callback that SIGKILLs the process once checkpoint 3 is on
# disk: the crash comes at a known step, and nothing in the process gets to clean up.
_KILLED_AT_3 = """
import os, signal, sys
from transformers import TrainerCallback
import training.trainer as trainer

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

run = trainer.run_training
trainer.run_training = lambda settings, callbacks=(): run(settings, callbacks=[*callbacks, KillAfterSave()])
sys.argv = ["mathcoder train", *sys.argv[1:]]
from training.train_cli import main
main()
"""


def test_a_packed_run_killed_with_sigkill_resumes_exactly(data: Path, tiny_dir: Path, tmp_path: Path) -> None:
    common = {"max_steps": 6, "save_steps": 3, "packing": True, "eval_fraction": 0.1}
    whole = run_training(_settings(data, tmp_path / "whole", tiny_dir, **common))
    args = [
        "--data", str(data), "--out", str(tmp_path / "split"), "--model", str(tiny_dir), "--lr", "3e-3",
        "--epochs", "2", "--batch-size", "2", "--max-len", "512", "--logging-steps", "1",
        "--eval-fraction", "0.1", "--max-steps", "6", "--save-steps", "3", "--packing",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_3, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = tmp_path / "split" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-3"]
    assert not (tmp_path / "split" / "model").exists()

    resumed = subprocess.run(
        [str(Path(sys.executable).parent / "mathcoder"), "train", *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    second = read_results(tmp_path / "split")
    assert second["resumed_from"].endswith("checkpoint-3") and second["steps"] == 6
    curve = second["loss_curve"]
    assert [s for s, _ in curve] == [s for s, _ in whole.loss_curve] == list(range(1, 7))
    assert [x for _, x in curve] == pytest.approx([x for _, x in whole.loss_curve], rel=1e-6)
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_a_resumed_run_must_keep_its_settings(data: Path, tiny_dir: Path, tmp_path: Path) -> None:
    common = {"max_steps": 2, "save_steps": 1, "eval_fraction": 0.0}
    run_training(_settings(data, tmp_path / "run", tiny_dir, **common), callbacks=[_StopAt(1)])
    with pytest.raises(TrainError, match=r"other settings \(lr: 0.003 -> 0.001\)"):
        run_training(_settings(data, tmp_path / "run", tiny_dir, lr=1e-3, **common))
    with pytest.raises(TrainError, match="holds checkpoints of an earlier run"):
        run_training(_settings(data, tmp_path / "run", tiny_dir, resume=False, **common))


async def _agenerate(model_dir: Path, prompt: str) -> Any:
    from runtime.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend.load(str(model_dir), RuntimeSettings(), device="cpu")
    try:
        return await backend.complete(CompletionRequest(prompt=prompt, max_tokens=8))
    finally:
        await backend.aclose()


def _generate(model_dir: Path, prompt: str) -> Any:
    """One completion from the saved model through the runtime's backend (its own event loop)."""
    return asyncio.run(_agenerate(model_dir, prompt))


PROMPT = (
    "<|im_start|>user\nAnn has 3 apples and gets 4 more. How many now?<|im_end|>\n<|im_start|>assistant\n"
)


def test_the_saved_model_loads_in_the_transformers_backend(
    data: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    results = run_training(_settings(data, tmp_path / "run", tiny_dir, max_steps=2, eval_fraction=0.0))
    model_dir = Path(results.model_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    assert json.loads((model_dir / "config.json").read_text())["use_cache"] is True
    completion = _generate(model_dir, PROMPT)
    assert completion.completion_tokens >= 1 and completion.finish_reason in ("eos", "length")


# peft 0.21 reads a property that transformers 5.2x deprecated (their compatibility, not ours).
_PEFT_COMPAT = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@_PEFT_COMPAT
def test_lora_trains_and_saves_merged_weights(data: Path, tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    settings = _settings(
        data, tmp_path / "lora", tiny_dir, lora=True, lora_rank=4, max_steps=4, eval_fraction=0.0
    )
    results = run_training(settings)
    assert results.lora and results.loss_curve[-1][1] < results.loss_curve[0][1]
    model_dir = Path(results.model_dir)
    assert not (model_dir / "adapter_config.json").exists() and (model_dir / "model.safetensors").is_file()
    base, merged = load_file(tiny_dir / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert base.keys() == merged.keys()  # plain weights, no lora_A/lora_B left
    assert any(not torch.equal(base[k], merged[k]) for k in base)
    completion = _generate(model_dir, PROMPT)
    assert completion.completion_tokens >= 1


@_PEFT_COMPAT
@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning")
# peft 0.22 saves the tied head's copy of the new rows and then calls that key unexpected on load:
# the head shares the embedding's rows, which the test checks loaded, so the key is redundant.
@pytest.mark.filterwarnings(
    r"ignore:Found unexpected adapter keys. \['base_model\.model\.lm_head\.token_adapter\.trainable_tokens_delta'\]"
    ":UserWarning"
)
def test_lora_adapter_alone_loads_with_peft_also_with_added_tokens(tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from peft import AutoPeftModelForCausalLM

    path = write_jsonl(tmp_path / "mc.jsonl", arithmetic_examples(12, "mathcoder"))
    settings = _settings(
        path,
        tmp_path / "adapter",
        tiny_dir,
        lora=True,
        lora_merge=False,
        lora_rank=4,
        max_steps=2,
        eval_fraction=0.0,
    )
    model_dir = Path(run_training(settings).model_dir)
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "model.safetensors").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(str(model_dir))
    assert model.get_input_embeddings().weight.shape[0] == 512 + len(SPECIAL_TOKENS)
    # The trained rows of the added tokens are what loaded, and the tied output head reads the same rows.
    saved = load_file(model_dir / "adapter_model.safetensors")
    inner = model.base_model.model
    rows = inner.model.embed_tokens.token_adapter.trainable_tokens_delta["default"]
    assert torch.equal(
        rows.detach(), saved["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    )
    assert inner.lm_head.token_adapter.trainable_tokens_delta["default"].data_ptr() == rows.data_ptr()
    out = model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


@_PEFT_COMPAT
def test_a_run_continues_another_runs_adapter(data: Path, tiny_dir: Path, tmp_path: Path) -> None:
    """--init-adapter: run B starts from run A's LoRA weights (rank and targets from A), not from scratch."""
    pytest.importorskip("peft")
    common: dict[str, Any] = {"lora": True, "lora_merge": False, "eval_fraction": 0.0, "max_steps": 2}
    first = run_training(_settings(data, tmp_path / "a", tiny_dir, lora_rank=4, **common))
    a_dir = Path(first.model_dir)
    # A learning rate too small to move float32 weights: B's saved adapter is what it started from.
    second = run_training(
        _settings(data, tmp_path / "b", tiny_dir, lr=1e-30, lora_rank=8, init_adapter=str(a_dir), **common)
    )
    a_weights = load_file(a_dir / "adapter_model.safetensors")
    b_weights = load_file(Path(second.model_dir) / "adapter_model.safetensors")
    assert a_weights.keys() == b_weights.keys() and any("lora_B" in k for k in a_weights)
    for key in a_weights:
        assert torch.allclose(a_weights[key].float(), b_weights[key].float()), key
    assert json.loads((Path(second.model_dir) / "adapter_config.json").read_text())["r"] == 4
    assert second.loss_curve[0][1] < first.loss_curve[0][1]  # it starts where A got to

    with pytest.raises(ValueError, match="needs lora"):
        _settings(data, tmp_path / "c", tiny_dir, init_adapter=str(a_dir))
    with pytest.raises(TrainDataError, match=r"no adapter_config\.json"):
        run_training(_settings(data, tmp_path / "d", tiny_dir, init_adapter=str(tmp_path), **common))


def test_mathcoder_format_adds_its_tokens_and_the_model_reads_them(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = write_jsonl(tmp_path / "mc.jsonl", arithmetic_examples(12, "mathcoder"))
    results = run_training(_settings(path, tmp_path / "mc", tiny_dir, max_steps=2, eval_fraction=0.0))
    assert results.format == "mathcoder" and results.encode["added_tokens"] == list(SPECIAL_TOKENS)
    model_dir = Path(results.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer) == 512 + len(SPECIAL_TOKENS)
    ids = tokenizer.encode("<|code|>print(1)<|endofblock|>", add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|code|>")
    completion = _generate(model_dir, "<|user|><|text|>1+1?<|endofblock|><|endofmessage|><|assistant|>")
    assert completion.completion_tokens >= 1


def test_cli_trains_and_prints_a_json_summary(data: Path, tiny_dir: Path, tmp_path: Path) -> None:
    import typer

    from training.train_cli import train

    app = typer.Typer()
    app.command()(train)
    out = tmp_path / "cli"
    args = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--model",
        str(tiny_dir),
        "--max-steps",
        "2",
        "--no-packing",
    ]
    result = CliRunner().invoke(app, [*args, "--lr", "1e-3", "--eval-fraction", "0.1", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["model_dir"] == str(out / "model")
    saved = read_results(out)
    assert saved["packing"] is False and saved["final_eval_loss"] is not None


@_PEFT_COMPAT
def test_lora_in_bf16_autocast_skips_peft_input_casts_for_the_same_numbers(tiny_dir: Path) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    from training.trainer import load_model, load_tokenizer, peft_input_casts, wrap_lora

    settings = TrainSettings(data=[Path("unused.jsonl")], out=Path("unused"), lora=True, lora_rank=4)
    tokenizer, added = load_tokenizer(str(tiny_dir), "markdown")
    torch.manual_seed(0)
    ours = wrap_lora(
        load_model(str(tiny_dir), tokenizer, attn_implementation=None), settings, tokenizer, added
    )
    layers = [m for m in ours.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.cast_input_dtype_enabled for m in layers)

    torch.manual_seed(0)
    casting = wrap_lora(
        load_model(str(tiny_dir), tokenizer, attn_implementation=None), settings, tokenizer, added
    )
    peft_input_casts(casting, on=True)  # peft's default
    for model in (ours, casting):  # LoRA B starts at zero: give the adapters something to contribute
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.02)

    ids = torch.randint(0, tokenizer.vocab_size, (2, 48))
    losses, grads = [], []
    for model in (ours, casting):
        model.eval()  # the tiny model's attention dropout would draw different masks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[0] == losses[1]
    assert torch.equal(grads[0], grads[1])
