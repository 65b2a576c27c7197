"""The finished data set of a generation run: traces, SFT view, rejections and the dataset card.

Derived from the run's ``outcomes.jsonl`` (and, for self-training, the data sets it merges with),
so it can be rebuilt at any time without regenerating anything.  Files, all in the run folder:

- ``traces.jsonl``: ``GenRecord`` per kept example, duplicates and test-set overlaps removed;
- ``sft.jsonl``: ``SftExample`` per kept example (segments with loss flags);
- ``rejections.jsonl``: every candidate that was not kept, with its reason;
- ``card.json`` / ``card.md``: counts, yields, reasons, repairs, dedupe statistics, sources,
  throughput and provenance (config, git commit, machine).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_io import environment
from runtime.batch.folder import write_atomic, write_jsonl
from training.generate.dedupe import NEAR_THRESHOLD, ContaminationIndex, DedupeStats, dedupe
from training.generate.records import GenerateConfig, GenRecord, SeedOutcome
from training.generate.sft_view import DEFAULT_PRESET, to_sft


def read_records(path: Path) -> list[GenRecord]:
    """The ``GenRecord`` lines of a ``traces.jsonl`` (a bad line is reported as ``file:line``)."""
    records: list[GenRecord] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    records.append(GenRecord.model_validate_json(line))
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: not a GenRecord: {exc}") from exc
    return records


def write_dataset(
    out_dir: Path,
    config: GenerateConfig,
    outcomes: Sequence[SeedOutcome],
    *,
    wall_time_s: float,
    merge_with: Sequence[Path] = (),
    contamination: ContaminationIndex | None = None,
    sft_preset: str = DEFAULT_PRESET,
    extra: dict[str, Any] | None = None,
    fresh: Collection[str] | None = None,
) -> dict[str, Any]:
    """Write the data set files for ``outcomes`` (in seed order) and return the card.

    ``fresh``: the ids of the seeds this invocation generated (default: all); ``wall_time_s`` is
    its time, so the card's rates count only those, not seeds resumed from an earlier run."""
    new = [r for o in outcomes for r in o.records]
    merged: list[GenRecord] = []
    for folder in merge_with:
        for record in read_records(Path(folder) / "traces.jsonl"):
            provenance = {"merged_from": str(folder), **record.provenance}
            merged.append(record.model_copy(update={"provenance": provenance}))
    stats = DedupeStats()
    clean = []
    for record in merged + new:  # existing data first: on a tie the older example stays
        if contamination is not None and contamination.contaminated(record.question):
            stats.count(record.mode, "contaminated")
            continue
        clean.append(record)
    kept = dedupe(clean, stats=stats)
    ids = [r.id for r in kept]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"two kept examples share the id {dup!r}; merged data sets overlap in ids")
    rejections = [r for o in outcomes for r in o.rejections]
    write_jsonl(out_dir / "traces.jsonl", kept)
    write_jsonl(out_dir / "sft.jsonl", [to_sft(r, sft_preset) for r in kept])
    write_jsonl(out_dir / "rejections.jsonl", rejections)
    card = _card(config, outcomes, kept, new, merged, stats, contamination, sft_preset)
    card["throughput"] = _throughput(outcomes, wall_time_s, fresh)
    card.update(extra or {})
    write_atomic(out_dir / "card.json", json.dumps(card, indent=2) + "\n")
    write_atomic(out_dir / "card.md", card_markdown(card))
    return card


def _throughput(
    outcomes: Sequence[SeedOutcome], wall_time_s: float, fresh: Collection[str] | None
) -> dict[str, Any]:
    ran = outcomes if fresh is None else [o for o in outcomes if o.id in fresh]
    examples = sum(len(o.records) for o in ran)
    return {
        "wall_time_s": round(wall_time_s, 3),
        "seeds_this_run": len(ran),
        "resumed_seeds": len(outcomes) - len(ran),
        "seeds_per_s": round(len(ran) / wall_time_s, 3) if ran and wall_time_s > 0 else None,
        "examples_per_s": round(examples / wall_time_s, 3) if ran and wall_time_s > 0 else None,
    }


def _card(
    config: GenerateConfig,
    outcomes: Sequence[SeedOutcome],
    kept: Sequence[GenRecord],
    new: Sequence[GenRecord],
    merged: Sequence[GenRecord],
    stats: DedupeStats,
    contamination: ContaminationIndex | None,
    sft_preset: str,
) -> dict[str, Any]:
    failed = [o.id for o in outcomes if o.infrastructure_failure is not None]
    outcomes = [o for o in outcomes if o.infrastructure_failure is None]  # not the data's outcome
    seeds = len(outcomes)
    productive = sum(bool(o.records) for o in outcomes)
    candidates = sum(o.candidates for o in outcomes)
    reasons = Counter(r.reason for o in outcomes for r in o.rejections)
    cells = [r.trace.metadata.usage.cells for r in kept]
    return {
        "mode": config.mode,
        "config": config.model_dump(),
        "sources": {
            "seeds": config.data_file or f"{config.dataset}/{config.split}",
            "teacher": None
            if config.backend is None
            else {"backend": config.backend, "model": config.model, "base_url": config.base_url},
            "merged_with": sorted({str(r.provenance["merged_from"]) for r in merged}),
        },
        "counts": {
            "seeds": seeds,
            "seeds_with_an_example": productive,
            "seed_yield": round(productive / seeds, 4) if seeds else 0.0,
            "candidates": candidates,
            "generated": len(new),
            "candidate_yield": round(len(new) / candidates, 4) if candidates else 0.0,
            "repaired_seeds": sum(o.repaired for o in outcomes),
            "merged_in": len(merged),
            "kept": len(kept),
            "by_mode": dict(Counter(r.mode for r in kept)),
        },
        "rejections": dict(reasons.most_common()),
        "infrastructure_failures": {
            "seeds": len(failed),
            "ids": failed[:50],
            "note": "sandbox or teacher failures after their retries: not counted above; a resume tries them again",
        },
        "dedupe": {
            "exact": stats.exact,
            "near": stats.near,
            "contaminated": stats.contaminated,
            "by_mode": stats.by_mode,
            "near_threshold": NEAR_THRESHOLD,
            "decontaminated_against": None if contamination is None else contamination.questions,
        },
        "traces": {
            "code_cells_mean": round(sum(cells) / len(cells), 3) if cells else 0.0,
            "with_code": sum(c > 0 for c in cells),
            "sft_preset": sft_preset,
        },
        "provenance": environment(),
        "samples": [r.id for r in kept[:3]],
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a short human-readable Markdown page."""
    counts, dd, thr = card["counts"], card["dedupe"], card["throughput"]
    lines = [
        f"# Data set card: `{card['mode']}`",
        "",
        f"Seeds: `{card['sources']['seeds']}`; teacher: `{card['sources']['teacher']}`; "
        f"merged with: {card['sources']['merged_with'] or 'nothing'}.",
        "",
        "| | |",
        "|---|---|",
        f"| seeds | {counts['seeds']} |",
        f"| seeds not done: infrastructure failures (a resume retries them) | "
        f"{card.get('infrastructure_failures', {}).get('seeds', 0)} |",
        f"| seeds with an example (yield) | {counts['seeds_with_an_example']} ({counts['seed_yield']:.1%}) |",
        f"| candidates / generated | {counts['candidates']} / {counts['generated']} |",
        f"| repaired seeds | {counts['repaired_seeds']} |",
        f"| merged in | {counts['merged_in']} |",
        f"| kept after dedupe | {counts['kept']} |",
        f"| duplicates dropped (exact / near) | {dd['exact']} / {dd['near']} |",
        f"| test-set overlaps dropped | {dd['contaminated']} |",
        f"| mean code cells per trace | {card['traces']['code_cells_mean']} |",
        f"| wall time (this run) | {thr['wall_time_s']} s for {thr['seeds_this_run']} seeds, {thr['resumed_seeds']} resumed "
        f"({thr['seeds_per_s']} seeds/s, {thr['examples_per_s']} examples/s) |",
        "",
        "Rejections by reason: " + (", ".join(f"{k} {v}" for k, v in card["rejections"].items()) or "none"),
        "",
        f"Produced by commit `{card['provenance'].get('commit')}`; sample ids: "
        + ", ".join(f"`{s}`" for s in card["samples"]),
        "",
    ]
    return "\n".join(lines)
