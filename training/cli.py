"""The training package's commands: ``mathcoder generate`` (training data) and ``mathcoder train``
(fine-tuning), as a ``typer.Typer`` called ``app`` that the console script mounts."""

from __future__ import annotations

import typer

from training.generate.cli import generate
from training.train_cli import train

app = typer.Typer()
app.command("generate")(generate)
app.command("train")(train)
