"""The SFT view of a kept example: its rendering cut into trained and masked segments.

The trace format owns rendering and masks (``Rendered.trained()``); this module only chooses the
system prompt (the preset a fine-tuned model will be prompted with) and groups the per-character
flags into segments, so training needs no knowledge of the format to apply the loss mask.
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
    flags = rendered.trained()
    segments: list[SftSegment] = []
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            segments.append(SftSegment(text=rendered.text[start:i], train=flags[start]))
            start = i
    return SftExample(id=record.id, format=fmt.name, segments=segments)
