"""``mathcoder generate`` (training data) and ``mathcoder train`` (fine-tuning) on the command line."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from training.generate.cli import generate

    app.command("generate")(generate)
    try:
        from training.train_cli import train
    except ModuleNotFoundError as exc:  # until the training subsystem lands
        if exc.name != "training.train_cli":
            raise
    else:
        app.command("train")(train)
