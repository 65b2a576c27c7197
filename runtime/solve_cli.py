"""``mathcoder solve``: one problem, streamed to the terminal (or the whole trace as JSON)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape

from runtime.adapter import model_preset
from runtime.backends.base import SamplingParams
from runtime.backends.factory import BACKEND_KINDS, BackendChoiceError, check_backend, load_backend
from runtime.cli_options import Flag, options_from, validated
from runtime.consistency import majority_vote_async
from runtime.events import CodeCell, CodeDelta, ErrorEvent, ExecutionFinished, FinalAnswer, ProseDelta
from runtime.loop import DEFAULT_MAX_TOKENS, LoopLimits, run_trajectory
from runtime.prompts import PRESETS, get_preset
from runtime.settings import RuntimeSettings
from sandbox.errors import SandboxError
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings


class SolveOptions(BaseModel):
    """What ``mathcoder solve`` solves with: each field is an option of the command (``--max-tokens``, ...)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(
        default=None, description="Model path or id; default: the embedded SmolLM2-135M."
    )
    backend: str = Field(default="auto", description=f"Model backend: {', '.join(BACKEND_KINDS)}.")
    base_url: str | None = Field(default=None, description="Server URL for --backend openai.")
    preset: str | None = Field(
        default=None,
        description=f"Prompt preset: {', '.join(PRESETS)}; default: the model's own (tir if none).",
    )
    adapter: str | None = Field(
        default=None,
        description="LoRA adapter on the default model: default (the shipped one), none (the plain base model) "
        "or an adapter folder; unset: MATHCODER_ADAPTER, else default.",
    )
    samples: int = Field(default=1, ge=1, description="Trajectories to sample; >1 votes (self-consistency).")
    temperature: float | None = Field(
        default=None, ge=0, description="Sampling temperature; default 0 for one sample, 0.7 for several."
    )
    max_rounds: int = Field(default=8, ge=0, description="Most code cells executed.")
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, description="Most tokens the model writes.")


@options_from(
    SolveOptions,
    fields=list(SolveOptions.model_fields),
    flags={"preset": Flag(decls=("--format", "--preset"))},
)
def solve(
    question: Annotated[str, typer.Argument(help="The math problem.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole trace(s) as JSON.")] = False,
    *,
    given: dict[str, Any],
) -> None:
    """Solve a problem with a model that writes and runs Python; stream the solution."""
    options = validated(SolveOptions, given)
    model, backend, base_url, preset = options.model, options.backend, options.base_url, options.preset
    samples, temperature = options.samples, options.temperature
    try:
        check_backend(backend, model, base_url)
    except BackendChoiceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backend") from exc
    max_rounds, max_tokens = options.max_rounds, options.max_tokens
    runtime_settings = RuntimeSettings.with_adapter(options.adapter)
    chosen = get_preset(preset or model_preset(runtime_settings, model))
    temp = temperature if temperature is not None else (0.0 if samples == 1 else 0.7)
    limits = LoopLimits(max_rounds=max_rounds, max_tokens=max_tokens)
    console = Console(highlight=False)

    async def go() -> int:
        model_backend = await asyncio.to_thread(load_backend, backend, model, base_url, runtime_settings)
        sandbox = SandboxSettings().model_copy(update={"pool_size": min(samples, 4)})
        finals: list[FinalAnswer | ErrorEvent] = []
        try:
            async with KernelPool(sandbox) as pool:

                async def one(i: int) -> FinalAnswer | ErrorEvent:
                    view = TerminalView(console)
                    sampling = SamplingParams(temperature=temp, seed=i if temp > 0 else None)
                    last: FinalAnswer | ErrorEvent | None = None
                    async for event in run_trajectory(
                        question,
                        backend=model_backend,
                        sessions=pool.session,
                        preset=chosen,
                        limits=limits,
                        sampling=sampling,
                    ):
                        if samples == 1 and not as_json:
                            view.show(event)
                        if isinstance(event, FinalAnswer | ErrorEvent):
                            last = event
                    assert last is not None
                    return last

                finals = list(await asyncio.gather(*(one(i) for i in range(samples))))
        finally:
            await model_backend.aclose()
        traces = [f.trace for f in finals if f.trace is not None]
        if as_json:
            payload = traces[0] if samples == 1 and traces else None
            typer.echo(
                payload.model_dump_json(indent=2)
                if payload
                else "[" + ",".join(t.model_dump_json() for t in traces) + "]"
            )
        if samples > 1:
            vote = await majority_vote_async(
                [f.answer if isinstance(f, FinalAnswer) else None for f in finals]
            )
            if not as_json:
                console.print(
                    f"[bold]answer (majority of {samples}):[/bold] {vote.answer}  votes: {list(vote.groups)}"
                )
        return 1 if any(isinstance(f, ErrorEvent) for f in finals) else 0

    try:
        code = asyncio.run(go())
    except SandboxError as exc:
        typer.echo(f"sandbox error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


class TerminalView:
    """A trajectory's events for a person, as they arrive: prose as the model writes it, each cell's
    code as code, its output set apart, the answer at the end.  At a terminal, colour marks what is
    what; elsewhere (a pipe, a file) the same stream is plain Markdown: code and output fenced."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.plain = not console.is_terminal
        self.open_cell: int | None = None
        self.at_line_start = True

    def _write(self, text: str, style: str | None = None) -> None:
        if text:
            self.console.print(text, end="", style=style, markup=False, highlight=False, soft_wrap=True)
            self.at_line_start = text.endswith("\n")

    def _line_break(self) -> None:
        if not self.at_line_start:
            self._write("\n")

    def _code(self, index: int, text: str) -> None:
        """Code of cell ``index``, under the cell's header the first time."""
        if self.open_cell != index:
            self.open_cell = index
            self._line_break()
            self._write("```python\n" if self.plain else f"── cell {index + 1} ──\n", "dim")
        self._write(text, None if self.plain else "cyan")

    def show(self, event: object) -> None:
        if isinstance(event, ProseDelta):
            self._write(event.text)
        elif isinstance(event, CodeDelta):
            self._code(event.index, event.text)
        elif isinstance(event, CodeCell):
            if self.open_cell != event.index:  # nothing streamed: the whole cell now
                self._code(event.index, event.code)
            self.open_cell = None
            self._line_break()
            if self.plain:
                self._write("```\n")
        elif isinstance(event, ExecutionFinished):
            ok = event.result.status.value == "ok"
            if self.plain:
                self._write(f"```output\n{event.output}\n```\n")
            else:
                marked = "".join(f"│ {line}\n" for line in (event.output or " ").splitlines())
                self._write(marked, "green" if ok else "red")
        elif isinstance(event, FinalAnswer):
            self._line_break()
            answer = escape(str(event.answer))
            self.console.print(f"\n[bold]answer:[/bold] {answer}  [dim]({event.stop_reason})[/dim]")
        elif isinstance(event, ErrorEvent):
            self._line_break()
            self.console.print(f"\n[red]error:[/red] {escape(event.message)}", highlight=False)
