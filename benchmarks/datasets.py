"""The registry of named benchmark data sets, and loading any JSONL file as ``Problem`` rows.

Owns: which sets exist (``REGISTRY``), where their files live (``<data_dir>/<name>/<split>.jsonl``,
``data_dir`` from ``BenchmarkSettings``), the common schema (``id``/``question``/``answer``; every
other field except the worked ``solution`` is kept in ``Problem.meta`` — MATH's ``level``/``type``,
MATH500's ``level``/``subject``, ...), and the Hugging Face hub fallback used only when a local file
is missing (needs the optional ``datasets`` package and a network connection).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.records import Problem
from benchmarks.settings import BenchmarkSettings

__all__ = ["REGISTRY", "DatasetError", "DatasetSpec", "HubSource", "load_jsonl", "load_problems"]

DROPPED_FIELDS = frozenset({"solution"})
"""Source fields not copied into ``meta``: the worked solution would only bloat every record."""


class DatasetError(ValueError):
    """A data set name, split or file that cannot be loaded; the message says what to change."""


def _gsm8k_answer(text: str) -> str:
    return text.split("####")[-1].strip().replace(",", "")


@dataclass(frozen=True)
class HubSource:
    """Where the same set lives on the Hugging Face hub, and how its rows map to the common schema."""

    path: str
    config: str | None = None
    question: str = "question"
    answer: str = "answer"
    splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split, when they differ
    convert: Callable[[str], str] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    splits: tuple[str, ...]
    description: str
    hub: HubSource | None = None


REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "gsm8k",
            ("test", "train"),
            "Grade-school math word problems",
            HubSource("openai/gsm8k", "main", convert=_gsm8k_answer),
        ),
        DatasetSpec("math", ("test", "train"), "Hendrycks MATH (meta: level, type)"),
        DatasetSpec(
            "math500",
            ("test",),
            "PRM800K's 500-problem MATH subset (meta: level, subject)",
            HubSource("HuggingFaceH4/MATH-500", question="problem"),
        ),
        DatasetSpec("mawps", ("test",), "MAWPS, all four subsets (meta: subset)"),
        DatasetSpec("addsub", ("test",), "MAWPS AddSub"),
        DatasetSpec("multiarith", ("test",), "MAWPS MultiArith"),
        DatasetSpec("singleeq", ("test",), "MAWPS SingleEq"),
        DatasetSpec("singleop", ("test",), "MAWPS SingleOp"),
        DatasetSpec("asdiv", ("test",), "ASDiv (ToRA's single-answer subset)"),
        DatasetSpec("gsm8k_backward", ("test",), "MetaMath backward GSM8K questions"),
        DatasetSpec("mathematics", ("test",), "DeepMind Mathematics, MathCoder's 1k"),
        DatasetSpec("simuleq", ("test",), "Simultaneous equations (MathCoder)"),
        DatasetSpec("tabmwp", ("test1k", "dev1k"), "Tabular math word problems, 1k subsets"),
        DatasetSpec("college_math", ("test", "train"), "MWPBench CollegeMath"),
        DatasetSpec("gaokaobench_math", ("test",), "MWPBench GaokaoBench-Math"),
        DatasetSpec("fresh_gaokao_math_2023", ("test",), "MWPBench Fresh-GaokaoMath-2023"),
        DatasetSpec(
            "aime24",
            ("test",),
            "AIME 2024",
            HubSource("HuggingFaceH4/aime_2024", question="problem", splits={"test": "train"}),
        ),
        DatasetSpec("amc23", ("test",), "AMC 2023", HubSource("math-ai/amc23")),
        DatasetSpec("aqua", ("test",), "AQuA-RAT (multiple choice; answer = option letter)"),
        DatasetSpec("minerva_math", ("test",), "Minerva MATH subset (meta: type)"),
        DatasetSpec("olympiadbench", ("test",), "OlympiadBench OE_TO_maths_en_COMP"),
    )
}


def _as_text(value: Any, what: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise DatasetError(f"{where}: field {what!r} must be a string or a number, got {type(value).__name__}")


def _rows_to_problems(
    rows: Iterable[tuple[int, dict[str, Any]]],
    *,
    dataset: str,
    split: str,
    question_field: str,
    answer_field: str,
    id_field: str | None,
    where: str,
    limit: int | None,
    keep_solution: bool = False,
) -> list[Problem]:
    problems: list[Problem] = []
    dropped = set() if keep_solution else DROPPED_FIELDS
    used = {question_field, answer_field, *([id_field] if id_field else []), *dropped}
    for index, row in rows:
        if limit is not None and len(problems) >= limit:
            break
        at = f"{where}:{index + 1}"
        for name in (question_field, answer_field, *([id_field] if id_field else [])):
            if name not in row:
                raise DatasetError(f"{at}: missing field {name!r} (fields present: {sorted(row)})")
        ident = _as_text(row[id_field], id_field, at) if id_field else f"{dataset}-{split}-{index}"
        problems.append(
            Problem(
                id=ident,
                question=_as_text(row[question_field], question_field, at),
                answer=_as_text(row[answer_field], answer_field, at).strip(),
                dataset=dataset,
                split=split,
                meta={k: v for k, v in row.items() if k not in used and k != "id"},
            )
        )
    return problems


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{index + 1}: not valid JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{index + 1}: expected a JSON object")
            yield index, row


def load_jsonl(
    path: str | Path,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
    *,
    dataset: str | None = None,
    split: str = "custom",
    limit: int | None = None,
    keep_solution: bool = False,
) -> list[Problem]:
    """Problems from any JSONL file; ids are ``<dataset>-<split>-<line index>`` when ``id_field`` is None.

    ``dataset`` defaults to the file's stem; fields other than the three named ones go to ``meta``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    return _rows_to_problems(
        _read_jsonl(path),
        dataset=dataset or path.stem,
        split=split,
        question_field=question_field,
        answer_field=answer_field,
        id_field=id_field,
        where=str(path),
        limit=limit,
        keep_solution=keep_solution,
    )


def _from_hub(spec: DatasetSpec, split: str, data_dir: Path, limit: int | None) -> list[Problem]:
    missing = data_dir / spec.name / f"{split}.jsonl"
    hint = f"set MATHCODER_BENCH_DATA_DIR (BenchmarkSettings.data_dir; now {data_dir}) to the data folder"
    if spec.hub is None:
        raise DatasetError(f"{missing} not found and {spec.name!r} has no hub source; {hint}")
    try:
        hf = importlib.import_module("datasets")
    except ImportError as exc:
        raise DatasetError(
            f"{missing} not found, and loading from the Hugging Face hub needs `pip install datasets`; {hint}"
        ) from exc
    hub = spec.hub
    try:
        rows = hf.load_dataset(hub.path, hub.config, split=hub.splits.get(split, split))
    except Exception as exc:  # offline, renamed, gated: all one answer for the user
        raise DatasetError(
            f"{missing} not found and {hub.path} could not be loaded from the hub "
            f"({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    convert = hub.convert or (lambda text: text)
    converted = (
        (i, {**dict(row), hub.answer: convert(_as_text(row[hub.answer], hub.answer, hub.path))})
        for i, row in enumerate(rows)
    )
    return _rows_to_problems(
        converted,
        dataset=spec.name,
        split=split,
        question_field=hub.question,
        answer_field=hub.answer,
        id_field=None,
        where=hub.path,
        limit=limit,
    )


def load_problems(
    name: str,
    split: str = "test",
    *,
    data_dir: Path | None = None,
    limit: int | None = None,
    keep_solution: bool = False,
) -> list[Problem]:
    """The first ``limit`` problems (all if None) of a registered set, in file order.

    ``keep_solution`` keeps the worked solution in ``meta["solution"]`` (data generation needs it).

    ``data_dir`` defaults to ``BenchmarkSettings().resolve_data_dir()``.
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise DatasetError(f"unknown data set {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    if split not in spec.splits:
        raise DatasetError(f"{name!r} has no split {split!r}; valid splits: {', '.join(spec.splits)}")
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0, got {limit}")
    data_dir = data_dir if data_dir is not None else BenchmarkSettings().resolve_data_dir()
    path = data_dir / name / f"{split}.jsonl"
    if not path.is_file():
        return _from_hub(spec, split, data_dir, limit)
    return _rows_to_problems(
        _read_jsonl(path),
        dataset=name,
        split=split,
        question_field="question",
        answer_field="answer",
        id_field="id",
        where=str(path),
        limit=limit,
        keep_solution=keep_solution,
    )
