"""The ``mathcoder`` command line: the console script's module, and the only module that imports
every package (``tests/test_layering.py`` exempts it alone).

Each package exposes its commands the same way, as a ``typer.Typer`` called ``app`` in its ``cli``
module (the runtime's in ``runtime.commands``); this module mounts them: the sandbox's as the
``sandbox`` group, the others' at the top level.
"""

from __future__ import annotations

import typer

from benchmarks.cli import app as benchmarks_app
from runtime.commands import app as runtime_app
from sandbox.cli import app as sandbox_app
from training.cli import app as training_app

app = typer.Typer(
    name="mathcoder",
    help="MathCoder Runtime: tool-integrated math solving with a sandboxed Python interpreter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(runtime_app)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(benchmarks_app)
app.add_typer(training_app)

if __name__ == "__main__":
    app()
