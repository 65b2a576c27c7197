"""Exact and near-duplicate removal for generated examples, and test-set decontamination.

Written by hand: duplicates are only compared within one question (k samples of a seed, a handful
of traces each), so exact Jaccard similarity over word shingles is cheap and exact; a MinHash/LSH
library (datasketch) would trade exactness for a scale this never reaches.  Decontamination is a
set lookup of hashed word n-grams (the GPT-3 paper's 13-gram overlap test), again no library needed.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from runtime.trace import CodeBlock, TextBlock, Trace
from training.generate.records import GenRecord

NEAR_THRESHOLD = 0.8
"""Jaccard similarity of word 3-gram shingles at or above which two solutions count as one."""

_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?|[^\sa-z0-9]")


def normalize(text: str) -> str:
    """Lower case, one space between tokens: what two 'identical' solutions share."""
    return " ".join(_WORD.findall(text.lower()))


def solution_text(trace: Trace) -> str:
    """The model-written part of a trace (text and code; outputs follow from the code)."""
    return "\n".join(
        b.text if isinstance(b, TextBlock) else b.code
        for b in trace.blocks
        if isinstance(b, TextBlock | CodeBlock)
    )


def shingles(text: str, n: int = 3) -> frozenset[str]:
    words = normalize(text).split()
    if len(words) <= n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class DedupeStats:
    exact: int = 0
    near: int = 0
    contaminated: int = 0
    by_mode: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, mode: str, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        per = self.by_mode.setdefault(mode, {"exact": 0, "near": 0, "contaminated": 0})
        per[kind] += 1


def dedupe(
    records: Sequence[GenRecord], *, threshold: float = NEAR_THRESHOLD, stats: DedupeStats | None = None
) -> list[GenRecord]:
    """``records`` without exact or near duplicates (Jaccard of word 3-gram shingles >= ``threshold``)
    of an earlier record with the same question; the first of each group is kept, order preserved."""
    stats = stats if stats is not None else DedupeStats()
    kept: list[GenRecord] = []
    seen_exact: set[tuple[str, str]] = set()
    seen_near: dict[str, list[frozenset[str]]] = {}
    for record in records:
        question = normalize(record.question)
        text = solution_text(record.trace)
        key = (question, normalize(text))
        if key in seen_exact:
            stats.count(record.mode, "exact")
            continue
        grams = shingles(text)
        if any(jaccard(grams, other) >= threshold for other in seen_near.get(question, [])):
            stats.count(record.mode, "near")
            continue
        seen_exact.add(key)
        seen_near.setdefault(question, []).append(grams)
        kept.append(record)
    return kept


class ContaminationIndex:
    """Hashed word n-grams of benchmark test questions; a generated question sharing one is dropped."""

    def __init__(self, questions: Iterable[str], n: int = 13) -> None:
        self.n = n
        self.grams: set[int] = set()
        self.questions = 0
        for q in questions:
            self.grams |= self._grams(q)
            self.questions += 1

    def _grams(self, text: str) -> set[int]:
        words = normalize(text).split()
        if len(words) < self.n:
            return {zlib.crc32(" ".join(words).encode())} if words else set()
        return {zlib.crc32(" ".join(words[i : i + self.n]).encode()) for i in range(len(words) - self.n + 1)}

    def contaminated(self, question: str) -> bool:
        return not self.grams.isdisjoint(self._grams(question))
