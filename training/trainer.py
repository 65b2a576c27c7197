"""A fine-tuning run: data split, model and tokenizer set-up, the transformers ``Trainer``, results.

``run_training(settings)`` is ``mathcoder train``.  It reads and encodes the data (``training.encode``),
holds out whole seed problems for the eval loss, builds packed or padded rows
(``training.packing``), loads the base model (the runtime's default model unless another is named),
optionally wraps it in LoRA adapters (peft), trains with transformers' ``Trainer`` (cosine schedule
with warm-up, bf16 autocast on GPUs and bf16 CPUs, gradient checkpointing, checkpoints every ``save_steps``),
resumes from the run folder's last checkpoint, and saves the final model as a Hugging Face folder
(safetensors + tokenizer) that ``TransformersBackend.load`` and ``mathcoder bench --model`` read.

Run folder (``settings.out``)::

    train_config.json     the settings; a resumed run must have the same ones (see _RESUME_FREE)
    checkpoints/          Trainer checkpoints (weights, optimizer, scheduler, RNG states, data position)
    model/                the final model (LoRA merged in unless lora_merge is off: then the adapter)
    train_results.json    TrainResults: steps, losses, real-token share, tokens/s, environment

Distributed training is accelerate's, not ours: ``accelerate launch --config_file training/fsdp.yaml
-m training.train_cli ...`` runs the same code on every process; the Trainer shards the data and the
model.  Each process counts the real tokens it trained on; the totals are summed across processes.

What the subclass adds to ``Trainer``: it pops the collator's ``real_tokens``/``slots`` counts before
the forward pass (logging ``real_token_share`` and ``tokens_per_s`` with each loss), and its
``evaluate`` computes a token-weighted eval loss (the mean over every trained token of the split),
so packed and padded runs report comparable numbers (the stock loop averages per-batch means).
"""

from __future__ import annotations

import json
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import BaseModel, Field
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint as _get_last_checkpoint

from runtime.cpu import cpu_supports_bf16, huge_page_state
from training.encode import (
    IGNORE_INDEX,
    Encoded,
    TrainDataError,
    TrainDataWarning,
    check_tokenizer,
    encode_all,
    load_sft,
    prepare_tokenizer,
    resolve_format,
)
from training.generate.records import SftExample
from training.packing import RowCollator, RowDataset, pack_rows, single_rows
from training.settings import TrainSettings

# Untyped in transformers (mypy --strict refuses calls to it from typed code).
get_last_checkpoint: Any = _get_last_checkpoint

# Settings that may change between a run and its resumption (they do not change what is computed).
_RESUME_FREE = frozenset(
    {"resume", "name", "num_workers", "logging_steps", "eval_steps", "save_steps", "save_total_limit"}
)
# Gradient checkpointing by default only where memory is the limit: it costs ~30% of the speed.
_CHECKPOINTING_PARAMS = 1_000_000_000


class TrainError(RuntimeError):
    """The run cannot start or go on as configured; the message says what to change."""


class TrainHardwareWarning(UserWarning):
    """Training goes on, but the hardware makes a setting slower than it should be."""


class TrainResults(BaseModel):
    """``train_results.json``: what was trained on what, how fast, and to which losses."""

    name: str
    data: list[str]
    model: str = Field(description="The base model.")
    model_dir: str = Field(description="Where the fine-tuned model was saved.")
    format: str
    steps: int
    epochs: float
    examples_train: int
    examples_eval: int
    rows_train: int
    packing: bool
    lora: bool
    bf16: bool
    gradient_checkpointing: bool
    attn_implementation: str | None
    device: str
    world_size: int
    train_tokens: int = Field(description="Real (non-pad) tokens trained on, all processes, this session.")
    tokens_per_s: float = Field(description="train_tokens over the time spent in training steps.")
    tokens_per_s_wall: float = Field(description="train_tokens over the whole training loop (eval, saves).")
    real_token_share: float = Field(description="Real tokens / batch slots (rows x width), over all batches.")
    real_token_share_min: float = Field(description="The smallest share of one batch.")
    final_train_loss: float | None = Field(description="The last logged training loss (mean of its window).")
    mean_train_loss: float | None = Field(description="Mean training loss of the session (Trainer's).")
    final_eval_loss: float | None
    loss_curve: list[tuple[int, float]] = Field(default_factory=list, description="(step, logged loss).")
    eval_curve: list[tuple[int, float]] = Field(default_factory=list, description="(step, eval loss).")
    resumed_from: str | None = None
    train_time_s: float = Field(description="Time in training steps (forward, backward, optimizer).")
    wall_time_s: float = Field(description="The whole call: loading, encoding, training, saving.")
    encode: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any]


# -- data -------------------------------------------------------------------------------------------


def group_key(example_id: str) -> str:
    """The seed problem of an example: ids are ``'<seed id>/<mode>/<n>[/...]'`` (training.generate).

    Seed ids of the registered data sets (``gsm8k-train-12``) hold no ``/``; one that does only
    makes the groups coarser, which keeps the split clean.
    """
    return example_id.split("/", 1)[0]


def split_examples(
    examples: Sequence[SftExample], eval_fraction: float, seed: int
) -> tuple[list[SftExample], list[SftExample]]:
    """(train, eval): ``eval_fraction`` of the seed problems, drawn with ``seed``, go to eval.

    All traces of one seed problem stay on one side, so the eval loss is not measured on another
    trace of a problem the model trained on.  Depends only on the set of ids and the seed, not on
    the order of the files.
    """
    if eval_fraction <= 0:
        return list(examples), []
    groups = sorted({group_key(ex.id) for ex in examples})
    if len(groups) < 2:
        raise TrainDataError(
            f"eval_fraction={eval_fraction} needs at least two seed problems; the data has {len(groups)} "
            "(pass --eval-fraction 0 to train without an eval split)"
        )
    random.Random(seed).shuffle(groups)
    n_eval = min(len(groups) - 1, max(1, round(eval_fraction * len(groups))))
    held = set(groups[:n_eval])
    train = [ex for ex in examples if group_key(ex.id) not in held]
    evals = [ex for ex in examples if group_key(ex.id) in held]
    return train, evals


def build_rows(examples: Sequence[Encoded], *, packing: bool, max_len: int) -> RowDataset:
    return RowDataset(pack_rows(examples, max_len) if packing else single_rows(examples))


# -- model ------------------------------------------------------------------------------------------


def resolve_model_source(model: str | None) -> str:
    """``model``, or the runtime's default model as a Hugging Face folder (converted once)."""
    if model is not None:
        return model
    from runtime.model_store import ModelFetchError, ensure_hf_model
    from runtime.settings import RuntimeSettings

    try:
        return str(ensure_hf_model(RuntimeSettings()))
    except ModelFetchError as exc:
        raise TrainError(f"the default model is unavailable ({exc}); pass --model A_HF_FOLDER") from exc


def load_tokenizer(source: str, fmt: str) -> tuple[Any, list[str]]:
    """The tokenizer of ``source`` with the format's delimiters added; and the tokens that were added."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    added = prepare_tokenizer(tokenizer, fmt)
    if tokenizer.pad_token is None:  # only row padding uses it, and its labels are -100
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, added


def load_model(source: str, tokenizer: Any, *, attn_implementation: str | None) -> Any:
    """The base model in float32 (the master weights; bf16 is autocast), embeddings sized to the tokenizer."""
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        # New rows start at the mean of the old embeddings (transformers' default), drawn with the run's seed.
        # Exactly len(tokenizer) rows: peft's AutoPeftModel resizes a base model to that when it loads an adapter.
        model.resize_token_embeddings(len(tokenizer))
    # A KV cache in the forward pass turns off transformers' detection of packed sequences
    # (masking_utils skips it when past_key_values is given); training never needs the cache.
    model.config.use_cache = False
    return model


def wrap_lora(model: Any, settings: TrainSettings, tokenizer: Any, added: Sequence[str]) -> Any:
    """LoRA adapters on every linear layer; rows of tokens the format added are trained too."""
    from peft import LoraConfig, get_peft_model

    if settings.init_adapter is not None:
        wrapped = _continue_adapter(model, settings.init_adapter, added)
    else:
        new_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in added]
        config = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
            trainable_token_indices=new_ids or None,
        )
        wrapped = get_peft_model(model, config)
    return peft_input_casts(wrapped, on=False)


def peft_input_casts(model: Any, *, on: bool) -> Any:
    """Turn peft's cast of each adapted layer's input to the adapter's dtype on or off; training: off.

    The master weights (adapters included) are float32 and bf16 is autocast: autocast casts that
    input straight back to bf16 for the adapter's matmul, so peft's cast is a copy of every adapted
    layer's activations forward and backward for the same numbers (the loss and gradients are
    bit-identical without it; the profile of a LoRA step showed casts at 18% of its CPU).  In float32
    the input already has the adapter's dtype and nothing changes."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            # peft reads it with getattr (default on): a flag, not a declared attribute.
            setattr(module, "cast_input_dtype_enabled", on)  # noqa: B010
    return model


def init_adapter_folder(choice: str) -> Path:
    """The adapter folder ``--init-adapter`` names ("default": the one this package ships)."""
    if choice == "default":
        from runtime.adapter import packaged_adapters

        shipped = packaged_adapters()
        if not shipped:
            raise TrainDataError("--init-adapter default: this package ships no adapter")
        return shipped[0]
    folder = Path(choice).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise TrainDataError(f"--init-adapter {choice}: no adapter_config.json there (a LoRA adapter folder)")
    return folder


def _continue_adapter(model: Any, choice: str, added: Sequence[str]) -> Any:
    """The model with an existing LoRA adapter loaded as the trainable starting point."""
    from peft import PeftModel

    if added:  # the adapter's embedding rows for them would be missing or meaningless
        raise TrainDataError("--init-adapter cannot be combined with a format that adds tokens")
    # Loaded in float32 (peft upcasts a float16 export), so the optimizer works on full precision.
    return PeftModel.from_pretrained(model, str(init_adapter_folder(choice)), is_trainable=True)


# -- the trainer --------------------------------------------------------------------------------------


@dataclass
class _Meter:
    """Real tokens and batch slots trained on, and the time spent in steps (this process)."""

    real: int = 0
    slots: int = 0
    window_real: int = 0
    window_slots: int = 0
    window_time: float = 0.0
    step_time: float = 0.0
    shares: list[float] = field(default_factory=list)
    step_started: float | None = None


class _StepTimer(TrainerCallback):
    """Times each optimizer step (forward, backward, optimizer), waiting for the GPU at both ends."""

    def __init__(self, meter: _Meter) -> None:
        self.meter = meter

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sync()
        self.meter.step_started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.meter.step_started is None:
            return
        self._sync()
        spent = time.perf_counter() - self.meter.step_started
        self.meter.step_time += spent
        self.meter.window_time += spent
        self.meter.step_started = None


class SftTrainer(Trainer):
    """``Trainer`` plus token accounting and a token-weighted eval loss (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = _Meter()
        self.add_callback(_StepTimer(self.meter))

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        real, slots = int(inputs.pop("real_tokens")), int(inputs.pop("slots"))
        m = self.meter
        m.real += real
        m.slots += slots
        m.window_real += real
        m.window_slots += slots
        m.shares.append(real / slots)
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        inputs.pop("real_tokens", None)
        inputs.pop("slots", None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        m = self.meter
        if "loss" in logs and m.window_slots:
            logs["real_token_share"] = round(m.window_real / m.window_slots, 4)
            if m.window_time > 0:  # this process's rate; multiply by the number of processes for the total
                logs["tokens_per_s"] = round(m.window_real / m.window_time, 1)
            m.window_real = m.window_slots = 0
            m.window_time = 0.0
        super().log(logs, start_time)

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        dataloader = self.get_eval_dataloader(eval_dataset)
        model: Any = self._wrap_model(
            cast(torch.nn.Module, self.model), training=False, dataloader=dataloader
        )
        was_training = model.training
        model.eval()
        device = self.args.device
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        with torch.no_grad():
            for batch in dataloader:
                inputs = self._prepare_inputs(batch)
                inputs.pop("real_tokens", None)
                inputs.pop("slots", None)
                # The loss shifts labels by one: position t predicts label t+1.
                n = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
                with self.compute_loss_context_manager():
                    loss = model(**inputs).loss
                if int(n) > 0:
                    total += loss.detach().double() * n
                    count += n
        if was_training:
            model.train()
        total = self.accelerator.reduce(total, reduction="sum")
        count = self.accelerator.reduce(count, reduction="sum")
        metrics = {f"{metric_key_prefix}_loss": float(total / count) if count > 0 else float("nan")}
        metrics[f"{metric_key_prefix}_tokens"] = float(count)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


# -- the run ------------------------------------------------------------------------------------------


def _check_resume(settings: TrainSettings, checkpoints: Path) -> str | None:
    """The checkpoint to resume from (None: a fresh run); refuse a folder holding a different run."""
    config_path = settings.out / "train_config.json"
    current = settings.model_dump(mode="json")
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last is None:
        return None
    if not settings.resume:
        raise TrainError(
            f"{settings.out} holds checkpoints of an earlier run ({last}); resume it (the default) "
            "or choose another --out"
        )
    if config_path.is_file():
        before = json.loads(config_path.read_text(encoding="utf-8"))
        changed = sorted(k for k in current if k not in _RESUME_FREE and before.get(k) != current[k])
        if changed:
            diffs = ", ".join(f"{k}: {before.get(k)!r} -> {current[k]!r}" for k in changed)
            raise TrainError(
                f"{settings.out} holds a run with other settings ({diffs}); a resumed run must match. "
                "Use the same settings, or another --out"
            )
    return str(last)


def _bf16(settings: TrainSettings) -> bool:
    """bf16 autocast: on by default where the hardware computes it natively (a bf16 GPU, or a bf16 CPU).

    Asked for on a CPU without native bf16 it runs (PyTorch emulates it) with a warning: there it is
    slower than fp32 (``python -m training.throughput_bench`` measures both side by side).
    """
    if torch.cuda.is_available():
        supported = bool(torch.cuda.is_bf16_supported())
        if settings.bf16 and not supported:
            raise TrainError(
                "--bf16: this GPU does not support bfloat16; leave it unset to choose automatically"
            )
    else:
        supported = cpu_supports_bf16()
        if settings.bf16 and not supported:
            warnings.warn(
                "--bf16 on a CPU without AVX512-BF16 or AMX: bfloat16 is emulated and slower than fp32 here",
                TrainHardwareWarning,
                stacklevel=2,
            )
    return supported if settings.bf16 is None else settings.bf16


def _checkpointing_args(on: bool) -> dict[str, Any]:
    """TrainingArguments for gradient checkpointing under the name this transformers release uses
    (``activation_checkpointing`` from 5.2x; ``gradient_checkpointing`` before, now a deprecated alias)."""
    if not on:
        return {}
    fields = TrainingArguments.__dataclass_fields__
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    # Non-reentrant checkpointing works with frozen inputs (LoRA) and is what PyTorch recommends.
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def _environment() -> dict[str, Any]:
    import transformers

    from benchmarks.bench_io import environment

    env = environment()
    env.update({"torch": torch.__version__, "transformers": transformers.__version__})
    # Whether large tensors sat on huge pages (runtime.cpu.prefer_huge_page_allocations): ~1.1x here.
    env["huge_pages"] = huge_page_state()
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def run_training(settings: TrainSettings, *, callbacks: Sequence[TrainerCallback] = ()) -> TrainResults:
    """Train as ``settings`` say and save the model; see the module docstring for the run folder."""
    from transformers import set_seed

    started = time.perf_counter()
    examples = load_sft(settings.data)  # errors in the data surface before any model is loaded
    fmt = resolve_format(examples, settings.format)
    train_ex, eval_ex = split_examples(examples, settings.eval_fraction, settings.seed)

    checkpoints = settings.out / "checkpoints"
    resume_from = _check_resume(settings, checkpoints)
    settings.out.mkdir(parents=True, exist_ok=True)

    set_seed(settings.seed)  # before the embeddings are resized: new rows are drawn at random
    source = resolve_model_source(settings.model)
    tokenizer, added = load_tokenizer(source, fmt)
    for problem in check_tokenizer(tokenizer, fmt):
        warnings.warn(problem, TrainDataWarning, stacklevel=2)
    encoded_train, stats = encode_all(
        train_ex, tokenizer, max_len=settings.max_len, overlong=settings.overlong, fmt=fmt
    )
    encoded_eval: list[Encoded] = []
    if eval_ex:
        encoded_eval, _ = encode_all(eval_ex, tokenizer, max_len=settings.max_len, overlong=settings.overlong)
    train_rows = build_rows(encoded_train, packing=settings.packing, max_len=settings.max_len)
    eval_rows = (
        build_rows(encoded_eval, packing=settings.packing, max_len=settings.max_len) if encoded_eval else None
    )

    model = load_model(source, tokenizer, attn_implementation=settings.attn_implementation)
    attn = str(model.config._attn_implementation)
    n_params = sum(p.numel() for p in model.parameters())
    if settings.lora:
        model = wrap_lora(model, settings, tokenizer, added)
    on_gpu = torch.cuda.is_available()
    bf16 = _bf16(settings)
    checkpointing = settings.gradient_checkpointing
    if checkpointing is None:
        checkpointing = on_gpu and n_params > _CHECKPOINTING_PARAMS

    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps is not None else -1,
        learning_rate=settings.lr,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=settings.weight_decay,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        bf16=bf16,
        # Without it transformers takes bf16 on a machine without CUDA for a mistake ("Your setup
        # doesn't support bf16/gpu"); with it, bf16 is CPU autocast, as on AVX512-BF16 machines.
        use_cpu=not on_gpu,
        **_checkpointing_args(checkpointing),
        eval_strategy="steps" if settings.eval_steps is not None and eval_rows is not None else "no",
        eval_steps=settings.eval_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        remove_unused_columns=False,  # the collator's rows are not model arguments by name
        label_names=["labels"],
        dataloader_num_workers=settings.num_workers,
        dataloader_pin_memory=on_gpu,
        torch_compile=settings.torch_compile,
    )
    pad_id = int(tokenizer.pad_token_id)
    trainer = SftTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=RowCollator(
            pad_id=pad_id, packed=settings.packing, pad_to_multiple_of=8 if on_gpu else 1
        ),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    if trainer.is_world_process_zero():
        (settings.out / "train_config.json").write_text(
            json.dumps(settings.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
    loop_started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    loop_time = time.perf_counter() - loop_started
    final_eval = trainer.evaluate() if eval_rows is not None else None

    model_dir = settings.out / "model"
    save_model(trainer, settings, source=source, fmt=fmt, target=model_dir)

    meter = trainer.meter
    totals = torch.tensor([meter.real, meter.slots], dtype=torch.float64, device=trainer.args.device)
    totals = trainer.accelerator.reduce(totals, reduction="sum")
    real, slots = int(totals[0]), int(totals[1])
    world = trainer.accelerator.num_processes
    history = trainer.state.log_history
    loss_curve = [(int(h["step"]), float(h["loss"])) for h in history if "loss" in h]
    eval_curve = [(int(h["step"]), float(h["eval_loss"])) for h in history if "eval_loss" in h]
    results = TrainResults(
        name=settings.run_name,
        data=[str(p) for p in settings.data],
        model=source,
        model_dir=str(model_dir),
        format=fmt,
        steps=trainer.state.global_step,
        epochs=float(trainer.state.epoch or 0.0),
        examples_train=len(encoded_train),
        examples_eval=len(encoded_eval),
        rows_train=len(train_rows),
        packing=settings.packing,
        lora=settings.lora,
        bf16=bf16,
        gradient_checkpointing=checkpointing,
        attn_implementation=attn,
        device=str(trainer.args.device),
        world_size=world,
        train_tokens=real,
        # Processes step in lockstep: the slowest one's step time is the run's.
        tokens_per_s=real / meter.step_time if meter.step_time > 0 else 0.0,
        tokens_per_s_wall=real / loop_time if loop_time > 0 else 0.0,
        real_token_share=real / slots if slots else 0.0,
        real_token_share_min=min(meter.shares, default=0.0),
        final_train_loss=loss_curve[-1][1] if loss_curve else None,
        mean_train_loss=float(output.training_loss) if trainer.state.global_step else None,
        final_eval_loss=final_eval["eval_loss"] if final_eval is not None else None,
        loss_curve=loss_curve,
        eval_curve=eval_curve,
        resumed_from=resume_from,
        train_time_s=meter.step_time,
        wall_time_s=time.perf_counter() - started,
        encode={
            **asdict(stats),
            "eval_examples": len(encoded_eval),
            "added_tokens": added,
            "params": n_params,
        },
        settings=settings.model_dump(mode="json"),
        environment=_environment(),
    )
    if trainer.is_world_process_zero():
        (settings.out / "train_results.json").write_text(
            results.model_dump_json(indent=2) + "\n", encoding="utf-8"
        )
    return results


def save_model(trainer: SftTrainer, settings: TrainSettings, *, source: str, fmt: str, target: Path) -> None:
    """Save the final model as a Hugging Face folder the runtime loads (merging LoRA if asked)."""
    if trainer.is_fsdp_enabled:
        # Checkpoints may be sharded; the final model is one full state dict.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    unwrapped.config.use_cache = True  # turned off for packed training; generation wants it
    if settings.lora and settings.lora_merge:
        adapter = target.with_name(f"{target.name}.adapter")
        trainer.save_model(str(adapter))
        if trainer.is_world_process_zero():
            _merge_adapter(adapter, source=source, fmt=fmt, target=target, seed=settings.seed)
            shutil.rmtree(adapter)
    else:
        trainer.save_model(str(target))
    trainer.accelerator.wait_for_everyone()


def _merge_adapter(adapter: Path, *, source: str, fmt: str, target: Path, seed: int) -> None:
    """Base model + saved adapter -> merged full weights (reloaded, so it works after FSDP too)."""
    from peft import PeftModel
    from transformers import set_seed

    set_seed(seed)  # the same draw as at the start of training for embedding rows the format added
    tokenizer, _ = load_tokenizer(source, fmt)
    base = load_model(source, tokenizer, attn_implementation=None)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.config.use_cache = True
    if target.exists():
        shutil.rmtree(target)
    merged.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
