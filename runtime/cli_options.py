"""Command-line options generated from a settings model, so that a command and its model cannot drift.

``options_from(Model, fields=...)`` decorates a typer command: it adds one ``--field-name`` option
per field (its help is the field's description and default; ``Flag`` keeps an existing spelling or
alias), and the command receives, as ``given``, only the options given on the command line — so the
model's defaults (and, for a ``BaseSettings`` model, its environment variables) fill the rest.
``validated(Model, given, **more)`` builds the model and turns a validation error into exit status 2
with a message naming the options.  ``mathcoder solve``, ``bench`` and ``generate`` are built this way;
``train`` spells its options out and a test checks them against ``TrainSettings`` the same way.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = [
    "Flag",
    "RayAddress",
    "RayWorkers",
    "ReplayScript",
    "ShowProgress",
    "option_help",
    "options_from",
    "validated",
]

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


# Options of every command that runs a batch (``bench``, ``generate``): one spelling, one help.
RayAddress = Annotated[
    str | None, typer.Option(help="Shard over Ray workers: a cluster address, 'auto' or 'local'.")
]
RayWorkers = Annotated[int | None, typer.Option(min=1, help="Ray actors (default: one per CPU).")]
ReplayScript = Annotated[Path | None, typer.Option(hidden=True, help="Replay script of --backend scripted.")]
ShowProgress = Annotated[bool, typer.Option(help="Show a live progress bar.")]


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line, where the plain ``--field-name`` is not it."""

    decls: tuple[str, ...] = ()  # e.g. ("--format", "--preset"); a bool's default is --x/--no-x
    help: str | None = None  # replaces the field's description
    more: str = ""  # appended to the description


def option_help(info: FieldInfo, more: str = "", text: str | None = None) -> str:
    """A field's description and its default, as an option's help."""
    text = (info.description or "" if text is None else text) + more
    if info.default is PydanticUndefined:
        return f"{text} (required)" if info.default_factory is None else text
    if info.default is None:
        return text
    # Parentheses, not brackets: typer's rich help would read "[default: ...]" as markup and drop it.
    return f"{text} (default: {info.default})"


def _cli_type(annotation: Any) -> Any:
    """The type typer parses a field as: optional always (an option not given is None); a
    ``Literal`` of strings as ``str`` (the model checks the value and lists the choices)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return str | None
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _cli_type(inner[0])
    if annotation in (int, float, str, bool, Path):
        return annotation | None
    if origin is list:
        return annotation | None
    raise TypeError(f"no command-line type for {annotation!r}; list the field in `fields` only if it has one")


def options_from(
    model: type[BaseModel], *, fields: Sequence[str], flags: Mapping[str, Flag] | None = None
) -> Callable[[F], F]:
    """Decorate a command ``fn(..., given: dict[str, Any])`` with one option per field in ``fields``."""
    flags = flags or {}

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "given"]
        clash = {p.name for p in own} & set(fields)
        if clash:
            raise TypeError(f"{fn.__name__} spells out options that {model.__name__} generates: {clash}")
        added = []
        for name in fields:
            info = model.model_fields[name]
            flag = flags.get(name, Flag())
            cli_type = _cli_type(info.annotation)
            decls = flag.decls
            if not decls and info.annotation is bool:
                dashed = name.replace("_", "-")
                decls = (f"--{dashed}/--no-{dashed}",)
            option = typer.Option(*decls, help=option_help(info, flag.more, flag.help))
            added.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[cli_type, option]
                )
            )

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in fields if kwargs.get(name) is not None}
            for name in fields:
                kwargs.pop(name, None)
            return fn(*args, given=given, **kwargs)

        params = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind is p.POSITIONAL_OR_KEYWORD else p
            for p in own
        ]
        command.__signature__ = signature.replace(parameters=[*params, *added])  # type: ignore[attr-defined]
        hints = {p.name: p.annotation for p in [*own, *added]}
        command.__annotations__ = {**hints, "return": signature.return_annotation}
        return command  # type: ignore[return-value]

    return decorate


def validated(model: type[M], given: Mapping[str, Any], **more: Any) -> M:
    """``model(**given, **more)``; a validation error exits with status 2, naming the options."""
    try:
        return model(**{**given, **more})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        typer.echo(f"error: {problems}", err=True)
        raise typer.Exit(2) from None
