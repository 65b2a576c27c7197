"""`make adapter` on a tiny slice: real gsm8k-calc data, the recipe's training, the export — as commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")

from support.train import build_tiny_model

from runtime.adapter import read_card
from training.recipe import RECIPE, rebuild, train_args


def test_the_recipe_reads_as_train_options() -> None:
    args = train_args(RECIPE)
    assert args[:2] == ["--lora", "--lora-rank"]
    assert "--no-lora-merge" in args and "--packing" in args
    assert args[args.index("--save-steps") + 1] == str(RECIPE["save_steps"])


@pytest.mark.timeout(900)
def test_rebuild_makes_an_adapter_from_nothing_on_a_tiny_slice(tmp_path: Path) -> None:
    tiny = build_tiny_model(tmp_path / "tiny")
    adapter = rebuild(tmp_path / "rebuild", limit=6, max_steps=2, model=str(tiny))

    card = json.loads((tmp_path / "rebuild" / "generate" / "gsm8k-calc" / "card.json").read_text())["counts"]
    assert card["seeds"] == 6 and card["kept"] >= 5  # executed, validated traces of the first six problems
    results = json.loads((tmp_path / "rebuild" / "train" / "calc" / "train_results.json").read_text())
    assert results["steps"] == 2 and results["lora"] and results["packing"]
    assert results["settings"]["lora_rank"] == RECIPE["lora_rank"]
    adapter_card = read_card(adapter)
    assert (adapter_card.rank, adapter_card.method, adapter_card.preset) == (
        RECIPE["lora_rank"],
        "lora",
        "tir-sft",
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == RECIPE["lora_rank"] and config["inference_mode"]
