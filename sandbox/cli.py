"""Subcommands of the sandbox: ``mathcoder sandbox run`` and ``mathcoder sandbox repl``."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Annotated, Any

import typer

from sandbox.errors import SandboxError
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

app = typer.Typer(help="Run code in the sandbox.", no_args_is_help=True)


def _settings(timeout: float | None) -> SandboxSettings:
    # One kernel per command: a zygote (about a second of imports) would cost more than it saves,
    # so these start cold unless MATHCODER_SANDBOX_KERNEL_START says otherwise.
    settings = SandboxSettings(pool_size=0, max_kernels=2)
    if "MATHCODER_SANDBOX_KERNEL_START" not in os.environ:
        settings = settings.model_copy(update={"kernel_start": "cold"})
    return settings if timeout is None else settings.model_copy(update={"cell_timeout_s": timeout})


@app.command()
def run(
    code: Annotated[str, typer.Argument(help="Python code to run in a fresh sandboxed kernel.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole ExecutionResult as JSON.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Cell time limit in seconds.")] = None,
) -> None:
    """Run one cell; exit 0 whatever the code did, 2 only if the sandbox itself failed."""
    settings = _settings(timeout)

    async def go() -> None:
        async with KernelPool(settings) as pool, pool.session() as session:
            result = await session.execute(code)
        if as_json:
            typer.echo(result.model_dump_json(indent=2))
        else:
            typer.echo(result.prompt_text(settings.prompt_output_chars))
            typer.echo(f"[{result.status.value}, {result.wall_time_s * 1000:.1f} ms]", err=True)

    _run(go())


@app.command()
def repl(timeout: Annotated[float | None, typer.Option(help="Cell time limit in seconds.")] = None) -> None:
    """An interactive session: one kernel, state kept between cells; a blank line ends a block."""
    settings = _settings(timeout)

    async def go() -> None:
        async with KernelPool(settings) as pool, pool.session() as session:
            typer.echo("sandboxed kernel ready; Ctrl-D quits", err=True)
            while True:
                cell = await asyncio.to_thread(_read_cell)
                if cell is None:
                    return
                if cell.strip():
                    result = await session.execute(cell)
                    typer.echo(result.prompt_text(settings.prompt_output_chars))
                    if result.status.value != "ok":
                        typer.echo(f"[{result.status.value}]", err=True)

    _run(go())


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main``; a failure of the sandbox itself (not of the code) exits with status 2."""
    try:
        asyncio.run(main)
    except SandboxError as exc:
        typer.echo(f"sandbox error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _read_cell() -> str | None:
    """One cell from stdin: a line, or a block (a line ending in ':' continues until a blank line)."""
    lines: list[str] = []
    prompt = ">>> "
    while True:
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return "\n".join(lines) if lines else None
        line = line.rstrip("\n")
        if not lines and not line.rstrip().endswith(":"):
            return line
        if lines and not line.strip():
            return "\n".join(lines)
        lines.append(line)
        prompt = "... "
