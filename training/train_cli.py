"""``mathcoder train``: the command line of ``training.trainer.run_training``.

Every option is a ``TrainSettings`` field of the same name, with that field's help text (a test
checks that the two agree).  Only the options given are passed on, so ``MATHCODER_TRAIN_*``
environment variables fill the rest.  ``--dry-run`` reads and encodes the data, prints the counts
and one example with its loss mask coloured (trained green, masked dim), and trains nothing.

Also runnable as ``python -m training.train_cli`` -- which is what multi-GPU runs use::

    accelerate launch --config_file training/fsdp.yaml --num_processes 8 \\
        -m training.train_cli --data sft.jsonl --out runs/train/x

(see ``training/fsdp.yaml`` and ``training/gpu/README.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from runtime.cpu import prefer_huge_page_allocations
from training.settings import TrainSettings


def _help(name: str, more: str = "") -> str:
    info = TrainSettings.model_fields[name]
    text = (info.description or "") + more
    default = info.default
    if default is PydanticUndefined:
        return f"{text} (required)"
    if default is None:
        return text
    # Parentheses, not brackets: typer's rich help would read "[default: ...]" as markup and drop it.
    return f"{text} (default: {default})"


def train(
    data: Annotated[list[Path] | None, typer.Option(help=_help("data", " Repeat for several files."))] = None,
    out: Annotated[Path | None, typer.Option(help=_help("out"))] = None,
    name: Annotated[str | None, typer.Option(help=_help("name"))] = None,
    model: Annotated[str | None, typer.Option(help=_help("model"))] = None,
    format: Annotated[str | None, typer.Option(help=_help("format"))] = None,
    epochs: Annotated[float | None, typer.Option(help=_help("epochs"))] = None,
    max_steps: Annotated[int | None, typer.Option(help=_help("max_steps"))] = None,
    lr: Annotated[float | None, typer.Option(help=_help("lr"))] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help=_help("warmup_ratio"))] = None,
    weight_decay: Annotated[float | None, typer.Option(help=_help("weight_decay"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_help("batch_size"))] = None,
    grad_accum: Annotated[int | None, typer.Option(help=_help("grad_accum"))] = None,
    max_len: Annotated[int | None, typer.Option(help=_help("max_len"))] = None,
    overlong: Annotated[str | None, typer.Option(help=_help("overlong"))] = None,
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing", help=_help("packing"))] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--no-lora", help=_help("lora"))] = None,
    lora_rank: Annotated[int | None, typer.Option(help=_help("lora_rank"))] = None,
    lora_alpha: Annotated[int | None, typer.Option(help=_help("lora_alpha"))] = None,
    lora_dropout: Annotated[float | None, typer.Option(help=_help("lora_dropout"))] = None,
    init_adapter: Annotated[str | None, typer.Option(help=_help("init_adapter"))] = None,
    lora_merge: Annotated[
        bool | None, typer.Option("--lora-merge/--no-lora-merge", help=_help("lora_merge"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_help("seed"))] = None,
    eval_fraction: Annotated[float | None, typer.Option(help=_help("eval_fraction"))] = None,
    eval_steps: Annotated[int | None, typer.Option(help=_help("eval_steps"))] = None,
    save_steps: Annotated[int | None, typer.Option(help=_help("save_steps"))] = None,
    save_total_limit: Annotated[int | None, typer.Option(help=_help("save_total_limit"))] = None,
    logging_steps: Annotated[int | None, typer.Option(help=_help("logging_steps"))] = None,
    resume: Annotated[bool | None, typer.Option("--resume/--no-resume", help=_help("resume"))] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help=_help("bf16"))] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing", help=_help("gradient_checkpointing")
        ),
    ] = None,
    attn_implementation: Annotated[str | None, typer.Option(help=_help("attn_implementation"))] = None,
    torch_compile: Annotated[
        bool | None, typer.Option("--torch-compile/--no-torch-compile", help=_help("torch_compile"))
    ] = None,
    num_workers: Annotated[int | None, typer.Option(help=_help("num_workers"))] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Encode the data, print counts and one example's loss mask; do not train.")
    ] = False,
) -> None:
    """Fine-tune a causal LM on SFT traces (sft.jsonl); saves a Hugging Face model and train_results.json."""
    given = {k: v for k, v in locals().items() if k in TrainSettings.model_fields and v is not None}
    try:
        settings = TrainSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        typer.echo(f"error: {problems}", err=True)
        raise typer.Exit(2) from None
    prefer_huge_page_allocations()  # before torch is imported: PyTorch reads it once
    from training.encode import TrainDataError
    from training.trainer import TrainError

    try:
        if dry_run:
            _dry_run(settings)
            return
        from training.trainer import run_training

        results = run_training(settings)
    except (TrainDataError, TrainError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _print_results(results)


def _dry_run(settings: TrainSettings) -> None:
    from rich.console import Console

    from training.encode import encode_all, load_sft, resolve_format, show_mask
    from training.trainer import build_rows, load_tokenizer, resolve_model_source, split_examples

    examples = load_sft(settings.data)
    fmt = resolve_format(examples, settings.format)
    train_ex, eval_ex = split_examples(examples, settings.eval_fraction, settings.seed)
    tokenizer, added = load_tokenizer(resolve_model_source(settings.model), fmt)
    encoded, stats = encode_all(
        train_ex, tokenizer, max_len=settings.max_len, overlong=settings.overlong, fmt=fmt
    )
    rows = build_rows(encoded, packing=settings.packing, max_len=settings.max_len)
    console = Console()
    console.print(show_mask(encoded[0], tokenizer), highlight=False)
    console.print(
        f"\nformat {fmt}; {len(train_ex)} train / {len(eval_ex)} eval examples; kept {stats.kept}; "
        f"{stats.tokens} tokens ({stats.trained_tokens} trained), longest {stats.longest}; "
        f"{len(rows)} rows ({'packed' if settings.packing else 'padded'}), "
        f"{stats.tokens / (len(rows) * settings.max_len):.1%} of max_len filled; added tokens: {added or 'none'}",
        highlight=False,
    )


def _print_results(results: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"train {results.name}")
    for column in ("steps", "train loss", "eval loss", "tokens/s", "real-token share", "train s"):
        table.add_column(column, justify="right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    table.add_row(
        str(results.steps), fmt(results.final_train_loss), fmt(results.final_eval_loss),
        f"{results.tokens_per_s:,.0f}", f"{results.real_token_share:.1%}", f"{results.train_time_s:.1f}",
    )  # fmt: skip
    Console(stderr=True).print(table)
    summary = results.model_dump(
        include={"name", "model_dir", "steps", "final_train_loss", "final_eval_loss"}
    )
    summary.update(
        tokens_per_s=round(results.tokens_per_s, 1), real_token_share=round(results.real_token_share, 4)
    )
    import json

    typer.echo(json.dumps(summary))


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    app()


if __name__ == "__main__":
    main()
