"""The data set registry and JSONL loading, against the real files under the benchmark data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.datasets import REGISTRY, DatasetError, load_jsonl, load_problems


@pytest.mark.parametrize(
    ("name", "split"), [(s.name, split) for s in REGISTRY.values() for split in s.splits]
)
def test_every_registered_split_loads(data_dir: Path, name: str, split: str) -> None:
    problems = load_problems(name, split, data_dir=data_dir)
    assert problems
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.question and p.answer and p.dataset == name and p.split == split for p in problems)
    assert all("solution" not in p.meta and "id" not in p.meta for p in problems)


def test_every_folder_in_the_data_dir_is_registered(data_dir: Path) -> None:
    on_disk = {p.parent.name for p in data_dir.glob("*/*.jsonl")}
    assert on_disk == set(REGISTRY)


def test_counts_match_the_data_readme(data_dir: Path) -> None:
    assert len(load_problems("gsm8k", "test", data_dir=data_dir)) == 1319
    math = load_problems("math", "test", data_dir=data_dir)
    assert len(math) == 5000
    assert all(p.meta["level"].startswith("Level ") and p.meta["type"] for p in math)
    assert sum(p.meta["level"] == "Level 5" for p in math) == 1324
    math500 = load_problems("math500", "test", data_dir=data_dir)
    assert len(math500) == 500 and all(p.meta["subject"] and 1 <= p.meta["level"] <= 5 for p in math500)


def test_limit_takes_the_first_problems_in_file_order(data_dir: Path) -> None:
    first = load_problems("gsm8k", "test", data_dir=data_dir, limit=3)
    assert [p.id for p in first] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]


def test_load_jsonl_with_custom_fields_generates_ids_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [{"q": "1+1?", "a": 2, "tag": "easy"}, {"q": "3*3?", "a": "9", "tag": "hard"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    problems = load_jsonl(path, "q", "a")
    assert [p.id for p in problems] == ["mine-custom-0", "mine-custom-1"]
    assert [p.answer for p in problems] == ["2", "9"]
    assert problems[0].meta == {"tag": "easy"}
    named = load_jsonl(path, "q", "a", id_field="tag", dataset="toy", split="dev")
    assert [p.id for p in named] == ["easy", "hard"] and named[0].dataset == "toy"
    with pytest.raises(DatasetError, match=r"mine.jsonl:1: missing field 'question'"):
        load_jsonl(path)


def test_unknown_names_and_splits_list_the_valid_ones(data_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown data set 'svamp'; valid names: .*gsm8k.*math500"):
        load_problems("svamp", "test", data_dir=data_dir)
    with pytest.raises(DatasetError, match=r"no split 'dev'; valid splits: test, train"):
        load_problems("gsm8k", "dev", data_dir=data_dir)


def test_a_missing_local_file_names_the_data_dir_setting(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="MATHCODER_BENCH_DATA_DIR"):
        load_problems("math", "test", data_dir=tmp_path)
