"""``mathcoder generate`` (training data) and ``mathcoder train`` (fine-tuning) on the command line."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from training.generate.cli import generate
    from training.train_cli import train

    app.command("generate")(generate)
    app.command("train")(train)
