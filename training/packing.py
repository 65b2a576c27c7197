"""Batches of encoded examples: sequence packing with correct boundaries, or plain padding.

Both modes build *rows*: a row is one example (padding) or several whole examples bin-packed into
at most ``max_len`` tokens (packing; an example is never split).  The trainer's sampler shuffles
rows, and ``RowCollator`` turns a list of rows into one batch of shape (rows, longest row).

Packing uses transformers' own mechanism instead of hand-written attention masks: each row is
flattened by ``DataCollatorWithFlattening`` (position ids restart at 0 for every example; the
first label of every example is -100, so no example learns to predict its neighbour's first token)
and the batch carries ``position_ids`` and no ``attention_mask``.  transformers' mask builder then
detects the restarts and gives every example its own causal block (``find_packed_sequence_indices``
in ``masking_utils``, used by the eager, sdpa and flex attention implementations; flash attention
reads the same position ids).  That detection is skipped when a KV cache is passed, so the trainer
turns ``use_cache`` off.  Row padding at the end of a row gets restarting positions too: it is a
sequence of its own that no real token can see, and its labels are -100.

Padding puts one example per row, right-padded, with an ``attention_mask``.

Each batch also carries ``real_tokens`` and ``slots`` (tokens of examples, and rows x width), which
the trainer pops before the forward pass to report the share of real tokens per batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import DataCollatorWithFlattening as _DataCollatorWithFlattening

from training.encode import IGNORE_INDEX, Encoded

Row = list[Encoded]

# Untyped in transformers (mypy --strict refuses calls to it from typed code).
DataCollatorWithFlattening: Any = _DataCollatorWithFlattening


def pack_rows(examples: Sequence[Encoded], max_len: int) -> list[Row]:
    """Bin-pack whole examples into rows of at most ``max_len`` tokens (best fit decreasing).

    Each example, longest first, goes into the open row with the least room that still holds it
    (TRL's "bfd" strategy).  Deterministic for a given input; the trainer's seeded sampler
    shuffles the rows.
    """
    if max_len < 1:
        raise ValueError("max_len must be at least 1")
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[Row] = []
    rooms: list[tuple[int, int]] = []  # (room left, row index), sorted: bisect finds the best fit
    for i in order:
        ex = examples[i]
        if len(ex) > max_len:
            raise ValueError(f"example {ex.id} has {len(ex)} tokens, more than max_len={max_len}")
        at = bisect.bisect_left(rooms, (len(ex), -1))
        if at == len(rooms):
            rows.append([ex])
            bisect.insort(rooms, (max_len - len(ex), len(rows) - 1))
        else:
            room, r = rooms.pop(at)
            rows[r].append(ex)
            bisect.insort(rooms, (room - len(ex), r))
    return rows


def single_rows(examples: Sequence[Encoded]) -> list[Row]:
    """One example per row (padding mode)."""
    return [[ex] for ex in examples]


class RowDataset(Dataset[Row]):
    """Rows for the trainer's data loader (a plain map-style dataset: no ``datasets`` dependency)."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]

    @property
    def tokens(self) -> int:
        return sum(len(ex) for row in self.rows for ex in row)


@dataclass
class RowCollator:
    """Makes a batch of rows: packed (position ids, no mask) or padded (attention mask)."""

    pad_id: int
    packed: bool
    pad_to_multiple_of: int = 1  # round the width up (tensor-core friendly shapes on a GPU)

    def __post_init__(self) -> None:
        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def __call__(self, rows: Sequence[Row]) -> dict[str, Any]:
        lengths = [sum(len(ex) for ex in row) for row in rows]
        width = max(lengths)
        m = self.pad_to_multiple_of
        width = -(-width // m) * m
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
        if self.packed:
            # Padding restarts at position 0 as well: it becomes a separate sequence that no example sees.
            position_ids = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (row, n) in enumerate(zip(rows, lengths, strict=True)):
                flat = self._flatten([{"input_ids": ex.input_ids, "labels": ex.labels} for ex in row])
                input_ids[r, :n] = flat["input_ids"][0]
                labels[r, :n] = flat["labels"][0]
                position_ids[r, :n] = flat["position_ids"][0]
                position_ids[r, n:] = torch.arange(width - n)
            batch["position_ids"] = position_ids
        else:
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (row, n) in enumerate(zip(rows, lengths, strict=True)):
                if len(row) != 1:
                    raise ValueError("padding mode takes one example per row; use packed=True for more")
                input_ids[r, :n] = torch.tensor(row[0].input_ids)
                labels[r, :n] = torch.tensor(row[0].labels)
                attention_mask[r, :n] = 1
            batch["attention_mask"] = attention_mask
        batch["real_tokens"] = torch.tensor(sum(lengths))
        batch["slots"] = torch.tensor(len(rows) * width)
        return batch
