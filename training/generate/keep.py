"""Which sampled traces of one seed a sampling mode keeps (teacher, self-train, rephrase,
concept-graph): usable, accepted by the mode's own test (graded correct, or in the majority),
not an exact repeat of a kept one, at most ``keep_per_seed``; every other sample becomes a
rejection with its reason, so the dataset card accounts for all of them.  Near-duplicates across
the whole run are the job of ``dedupe.py``, after the run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.records import SampleRecord
from runtime.trace import Trace
from training.generate.context import GenContext
from training.generate.dedupe import normalize, solution_text
from training.generate.records import GenRecord, Rejection, SeedOutcome


def sample_failure(sample: SampleRecord) -> tuple[str, str] | None:
    """Why a trajectory has no usable trace whatever its answer — ``(reason, detail)`` — or None."""
    if sample.error is not None or sample.trace is None:
        return "trajectory error", (sample.error or "no trace")[:300]
    if sample.answer is None:
        return "no answer", ""
    return None


def teacher_label(ctx: GenContext) -> str:
    """The model that wrote the samples, as provenance names it."""
    cfg = ctx.config
    return f"{cfg.backend}/{cfg.model}" if cfg.model else ctx.teacher.name


@dataclass
class Keeper:
    """The kept records and the rejections of one seed, in the order the samples came."""

    seed_id: str
    mode: str
    limit: int
    records: list[GenRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _seen: set[str] = field(default_factory=set)

    @property
    def full(self) -> bool:
        return len(self.records) >= self.limit

    def reject(self, reason: str, detail: str = "") -> None:
        self.rejections.append(Rejection(seed_id=self.seed_id, mode=self.mode, reason=reason, detail=detail))

    def offer(
        self,
        label: str,
        sample: SampleRecord,
        refused: tuple[str, str] | None,
        record: Callable[[Trace], GenRecord],
    ) -> None:
        """Keep ``record(sample.trace)`` unless the sample failed, the mode ``refused`` it
        (``(reason, detail)``), it repeats a kept trace, or the seed has its fill."""
        failure = sample_failure(sample) or refused
        if failure is not None:
            self.reject(*failure)
            return
        assert sample.trace is not None
        key = normalize(solution_text(sample.trace))
        if key in self._seen:
            self.reject("duplicate trace", label)
        elif self.full:
            self.reject("keep_per_seed reached", label)
        else:
            self._seen.add(key)
            self.records.append(record(sample.trace))

    def outcome(self) -> SeedOutcome:
        return SeedOutcome(
            id=self.seed_id,
            records=self.records,
            rejections=self.rejections,
            candidates=len(self.records) + len(self.rejections),
            wall_time_s=round(time.monotonic() - self.started, 3),
        )
