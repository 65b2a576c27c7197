"""Text renderings of traces, selectable by name."""

from __future__ import annotations

from runtime.formats.base import Rendered, TraceFormat, TraceFormatError, TraceParseError, UnrenderableTrace
from runtime.formats.markdown import MarkdownFormat
from runtime.formats.mathcoder import MathCoderFormat

FORMATS: dict[str, type[TraceFormat]] = {cls.name: cls for cls in (MathCoderFormat, MarkdownFormat)}


def get_format(name: str) -> TraceFormat:
    """The format called ``name``; a ``KeyError`` lists the valid names."""
    try:
        return FORMATS[name]()
    except KeyError:
        raise KeyError(f"unknown trace format {name!r}; choose one of {sorted(FORMATS)}") from None


__all__ = [
    "FORMATS",
    "MarkdownFormat",
    "MathCoderFormat",
    "Rendered",
    "TraceFormat",
    "TraceFormatError",
    "TraceParseError",
    "UnrenderableTrace",
    "get_format",
]
