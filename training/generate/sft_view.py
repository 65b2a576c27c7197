"""The SFT view of a kept example: its rendering cut into trained and masked segments.

The trace format owns rendering and masks (``Rendered.trained()``); this module only chooses the
system prompt (the preset a fine-tuned model will be prompted with) and groups the per-character
flags into segments (``Rendered.segments``), so training needs no knowledge of the format to apply the loss mask.
"""

from __future__ import annotations

from runtime.prompts import get_preset
from training.generate.records import GenRecord, SftExample, SftSegment

DEFAULT_PRESET = "tir-sft"


def to_sft(record: GenRecord, preset: str = DEFAULT_PRESET) -> SftExample:
    """Render ``record.trace`` as ``preset`` prompts it (its format and system prompt, no few-shot)."""
    chosen = get_preset(preset)
    fmt = chosen.trace_format
    rendered = fmt.render(record.trace.model_copy(update={"system": chosen.system}))
    segments = [SftSegment(text=text, train=train) for text, train in rendered.segments()]
    return SftExample(id=record.id, format=fmt.name, segments=segments)
