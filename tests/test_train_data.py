"""Training data: reading and its errors, character-exact loss masks in both formats, the eval split,
packing (boundaries, and the same per-example logits as unpacked), and the settings/CLI agreement.

The masks are checked with the default model's real tokenizer (SmolLM2's, from the converted
default model folder); the packing check runs a tiny randomly initialised Llama.
"""

from __future__ import annotations

import gzip
import inspect
import json
import typing
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from support.train import (
    arithmetic_examples,
    build_tiny_model,
    default_tokenizer_dir,
    hand_traces,
    sft_example,
    tiny_tokenizer,
    write_jsonl,
)
from typer.testing import CliRunner

from runtime.formats import get_format
from runtime.formats.mathcoder import SPECIAL_TOKENS
from training.encode import (
    IGNORE_INDEX,
    Encoded,
    TrainDataError,
    TrainDataWarning,
    check_tokenizer,
    encode_all,
    encode_example,
    load_sft,
    prepare_tokenizer,
    resolve_format,
    show_mask,
)
from training.generate.records import SftExample, SftSegment
from training.packing import RowCollator, pack_rows, single_rows
from training.settings import TrainSettings
from training.train_cli import train
from training.trainer import group_key, split_examples

FORMATS = ("markdown", "mathcoder")


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # Two shared cores: torch's second thread spins against other processes and makes a tiny
    # model's forward pass many times slower, not faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    return default_tokenizer_dir()


def _smol(smol_dir: Path, fmt: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    prepare_tokenizer(tokenizer, fmt)
    return tokenizer


def _decoded_flags(enc: Encoded, tokenizer: Any) -> tuple[str, list[bool]]:
    """Decode each run of equally-labelled tokens; the text and one trained flag per character."""
    text, flags = "", []
    start = 0
    trained = [label != IGNORE_INDEX for label in enc.labels]
    for i in range(1, len(trained) + 1):
        if i == len(trained) or trained[i] != trained[start]:
            piece = tokenizer.decode(enc.input_ids[start:i], clean_up_tokenization_spaces=False)
            text += piece
            flags += [trained[start]] * len(piece)
            start = i
    return text, flags


# -- masks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_mask_is_character_exact(smol_dir: Path, fmt: str) -> None:
    tokenizer = _smol(smol_dir, fmt)
    for i, trace in enumerate(hand_traces()):
        rendered = get_format(fmt).render(trace)
        enc = encode_example(sft_example(trace, fmt, f"s{i}/x/0"), tokenizer)
        assert all(label in (IGNORE_INDEX, tok) for label, tok in zip(enc.labels, enc.input_ids, strict=True))
        text, flags = _decoded_flags(enc, tokenizer)
        assert text == rendered.text
        assert flags == rendered.trained()
        # The trained tokens decode to exactly the trained characters.
        trained_ids = [t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE_INDEX]
        trained_chars = "".join(c for c, f in zip(rendered.text, rendered.trained(), strict=True) if f)
        assert tokenizer.decode(trained_ids, clean_up_tokenization_spaces=False) == trained_chars


@pytest.mark.parametrize("fmt", FORMATS)
def test_end_of_turn_is_one_trained_token(smol_dir: Path, fmt: str) -> None:
    tokenizer = _smol(smol_dir, fmt)
    eot = get_format(fmt).end_of_turn
    eot_ids = tokenizer.encode(eot, add_special_tokens=False)
    assert len(eot_ids) == 1
    enc = encode_example(sft_example(hand_traces()[0], fmt, "a/b/0"), tokenizer)
    assert enc.input_ids[-1] == enc.labels[-1] == eot_ids[0]
    assert check_tokenizer(tokenizer, fmt) == []


def test_mathcoder_delimiters_are_single_tokens_the_runtime_can_read(smol_dir: Path) -> None:
    tokenizer = _smol(smol_dir, "mathcoder")
    assert prepare_tokenizer(tokenizer, "mathcoder") == []  # idempotent
    text = "".join(SPECIAL_TOKENS) + "x = 1"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids[: len(SPECIAL_TOKENS)] == tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    # The transformers backend decodes completions without special tokens: the delimiters must stay.
    assert tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == text


def test_show_mask_colours_trained_and_masked_text(smol_dir: Path) -> None:
    tokenizer = _smol(smol_dir, "markdown")
    enc = encode_example(sft_example(hand_traces()[0], "markdown", "a/b/0"), tokenizer)
    shown = show_mask(enc, tokenizer)
    assert shown.startswith("[dim]") and "[green]" in shown and shown.endswith("[/green]")


def test_untrained_end_of_turn_warns() -> None:
    tokenizer = tiny_tokenizer()
    good = sft_example(hand_traces()[0], "markdown", "a/b/0")
    segments = [*good.segments[:-1], SftSegment(text=good.segments[-1].text, train=False)]
    bad = SftExample(id="c/d/0", format="markdown", segments=segments)
    with pytest.warns(
        TrainDataWarning, match="1 of 2 examples do not end with a trained end-of-turn.*may not learn to stop"
    ):
        kept, stats = encode_all([good, bad], tokenizer, max_len=4096, fmt="markdown")
    assert stats.eot_untrained == 1 and len(kept) == 2


def test_tokenizer_with_another_eos_warns() -> None:
    tokenizer: Any = tiny_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"
    problems = check_tokenizer(tokenizer, "markdown")
    assert len(problems) == 1 and "eos token is '<|endoftext|>'" in problems[0]
    assert "splits the end-of-turn marker" in check_tokenizer(tokenizer, "mathcoder")[0]


# -- bad inputs ------------------------------------------------------------------------------------


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TrainDataError, match=r"data file .*nope\.jsonl does not exist"):
        load_sft([tmp_path / "nope.jsonl"])


def test_malformed_lines_are_named_by_file_and_line(tmp_path: Path) -> None:
    good = arithmetic_examples(1)[0].model_dump_json()
    path = tmp_path / "sft.jsonl"
    path.write_text(f"{good}\n\n{{not json\n", encoding="utf-8")
    with pytest.raises(TrainDataError, match=r"sft\.jsonl:3: not valid JSON"):
        load_sft([path])
    path.write_text(f"{good}\n" + json.dumps({"id": "x", "format": "markdown"}) + "\n", encoding="utf-8")
    with pytest.raises(TrainDataError, match=r"sft\.jsonl:2: not an SftExample .*segments: Field required"):
        load_sft([path])
    path.write_text("", encoding="utf-8")
    with pytest.raises(TrainDataError, match="no examples"):
        load_sft([path])


def test_gzipped_data_reads_like_plain(tmp_path: Path) -> None:
    examples = arithmetic_examples(3)
    plain = write_jsonl(tmp_path / "sft.jsonl", examples)
    packed = tmp_path / "sft.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_sft([packed]) == load_sft([plain]) == examples


def test_formats_are_checked() -> None:
    md, mc = arithmetic_examples(1, "markdown")[0], arithmetic_examples(1, "mathcoder")[0]
    assert resolve_format([md, md]) == "markdown"
    with pytest.raises(TrainDataError, match="mixes trace formats"):
        resolve_format([md, mc])
    with pytest.raises(TrainDataError, match="--format mathcoder was asked for"):
        resolve_format([md], "mathcoder")
    odd = md.model_copy(update={"format": "latex"})
    with pytest.raises(TrainDataError, match=r"unknown trace format\(s\) \['latex'\]"):
        resolve_format([odd])


def test_overlong_examples_are_dropped_or_truncated_with_a_count() -> None:
    tokenizer = tiny_tokenizer()
    examples = arithmetic_examples(1) + [
        sft_example(t, "markdown", f"h{i}/x/0") for i, t in enumerate(hand_traces())
    ]
    lengths = [len(encode_example(ex, tokenizer)) for ex in examples]
    limit = sorted(lengths)[1]  # two examples (at least) fit, the longest do not
    over = sum(n > limit for n in lengths)
    with pytest.warns(
        TrainDataWarning, match=f"{over} of 4 examples are longer than max_len={limit}.*dropped"
    ):
        kept, stats = encode_all(examples, tokenizer, max_len=limit, fmt="markdown")
    assert stats.dropped_overlong == over and len(kept) == 4 - over
    with pytest.warns(TrainDataWarning) as caught:
        kept, stats = encode_all(examples, tokenizer, max_len=limit, overlong="truncate", fmt="markdown")
    assert any("were truncated" in str(w.message) for w in caught)
    assert stats.truncated == over and len(kept) == 4 and max(map(len, kept)) == limit
    with pytest.raises(TrainDataError, match="none of the 4 examples"), pytest.warns(TrainDataWarning):
        encode_all(examples, tokenizer, max_len=8, fmt="markdown")


# -- the eval split --------------------------------------------------------------------------------


def test_eval_split_is_seeded_keeps_seed_problems_together_and_ignores_order() -> None:
    examples = [
        SftExample(
            id=f"gsm8k-train-{i}/{mode}/{j}", format="markdown", segments=[SftSegment(text="x", train=True)]
        )
        for i in range(50)
        for mode, j in (("gsm8k-calc", 0), ("backward", 0), ("backward", 1))
    ]
    train, evals = split_examples(examples, 0.1, seed=3)
    assert len({group_key(e.id) for e in evals}) == 5
    assert {group_key(e.id) for e in train}.isdisjoint({group_key(e.id) for e in evals})
    again = split_examples(list(reversed(examples)), 0.1, seed=3)[1]
    assert sorted(e.id for e in again) == sorted(e.id for e in evals)
    assert sorted(e.id for e in split_examples(examples, 0.1, seed=4)[1]) != sorted(e.id for e in evals)
    assert split_examples(examples, 0.0, seed=3) == (examples, [])
    with pytest.raises(TrainDataError, match="at least two seed problems"):
        split_examples(examples[:3], 0.1, seed=0)


# -- packing ---------------------------------------------------------------------------------------


def _toy(n: int, length: int, first: int = 10) -> Encoded:
    ids = list(range(first, first + length))
    return Encoded(id=f"e{n}", input_ids=ids, labels=[IGNORE_INDEX, *ids[1:]])


def test_pack_rows_keeps_every_example_whole_within_max_len() -> None:
    examples = [_toy(i, n) for i, n in enumerate([7, 3, 5, 2, 9, 1, 4, 6, 8, 10])]
    rows = pack_rows(examples, max_len=10)
    assert sorted(e.id for row in rows for e in row) == sorted(e.id for e in examples)
    assert all(sum(len(e) for e in row) <= 10 for row in rows)
    assert len(rows) == 6  # 55 tokens: 6 rows is the minimum for rows of 10
    with pytest.raises(ValueError, match="more than max_len"):
        pack_rows(examples, max_len=9)


def test_packed_batch_restarts_positions_and_masks_boundaries() -> None:
    a, b, c = _toy(0, 4), _toy(1, 3, first=50), _toy(2, 5, first=80)
    batch = RowCollator(pad_id=0, packed=True)([[a, b], [c]])
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 3, 4, 0, 1]]
    assert batch["input_ids"][0].tolist() == a.input_ids + b.input_ids
    # The first token of every example is no target: nothing learns to predict across a boundary.
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, 51, 52]
    assert batch["labels"][1, 5:].tolist() == [IGNORE_INDEX] * 2
    assert int(batch["real_tokens"]) == 12 and int(batch["slots"]) == 14
    padded = RowCollator(pad_id=0, packed=False, pad_to_multiple_of=8)(single_rows([a, b]))
    assert padded["attention_mask"].tolist() == [[1] * 4 + [0] * 4, [1] * 3 + [0] * 5]
    assert int(padded["real_tokens"]) == 7 and int(padded["slots"]) == 16


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_each_example_the_logits_it_gets_alone(tiny_dir: Path, attn: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    model.config.use_cache = False  # as in training: a cache would turn the packed-sequence detection off
    encoded, _ = encode_all(
        arithmetic_examples(5)
        + [sft_example(t, "markdown", f"h{i}/x/0") for i, t in enumerate(hand_traces())],
        tokenizer,
        max_len=512,
    )
    rows = pack_rows(encoded, max_len=300)
    assert max(len(row) for row in rows) >= 3
    batch = RowCollator(pad_id=tokenizer.pad_token_id, packed=True)(rows)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for r, row in enumerate(rows):
            at = 0
            for ex in row:
                alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
                torch.testing.assert_close(packed[r, at : at + len(ex)], alone, rtol=1e-4, atol=1e-4)
                at += len(ex)
        # And the batch loss equals the token-weighted mean of the examples' losses alone.
        loss = model(**{k: batch[k] for k in ("input_ids", "position_ids", "labels")}).loss
        sums = [
            model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss
            * (ex.trained_tokens)
            for row in rows
            for ex in row
        ]
        total = sum(ex.trained_tokens for row in rows for ex in row)
    torch.testing.assert_close(loss, torch.stack(sums).sum() / total, rtol=1e-5, atol=1e-5)


def test_the_cache_would_break_packing(tiny_dir: Path) -> None:
    """Why the trainer turns use_cache off: with a cache, examples in a row attend to each other."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model.eval()
    a, b = _toy(0, 6, first=20), _toy(1, 6, first=60)
    batch = RowCollator(pad_id=0, packed=True)([[a, b]])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits[0]
        cached = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True
        ).logits
    assert not torch.allclose(cached[0, 6:], alone, atol=1e-3)


# -- settings and the command line -----------------------------------------------------------------


def test_every_setting_is_a_cli_option_with_its_help() -> None:
    hints = typing.get_type_hints(train, include_extras=True)
    assert set(inspect.signature(train).parameters) - {"dry_run"} == set(TrainSettings.model_fields)
    for name in TrainSettings.model_fields:
        info = hints[name].__metadata__[0]
        assert (TrainSettings.model_fields[name].description or "") in info.help


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATHCODER_TRAIN_LR", "0.001")
    monkeypatch.setenv("MATHCODER_TRAIN_DATA", json.dumps([str(tmp_path / "a.jsonl")]))
    settings = TrainSettings(out=tmp_path)
    assert settings.lr == 0.001 and settings.data == [tmp_path / "a.jsonl"]
    assert settings.run_name == tmp_path.name


def _cli() -> Any:
    import typer

    app = typer.Typer()
    app.command()(train)
    return app


def test_cli_reports_bad_options_and_missing_data(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(_cli(), ["--data", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 2 and "--out: Field required" in result.output
    result = runner.invoke(_cli(), ["--data", "x.jsonl", "--out", str(tmp_path), "--format", "latex"])
    assert result.exit_code == 2 and "'auto', 'markdown' or 'mathcoder'" in result.output
    result = runner.invoke(_cli(), ["--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "none.jsonl does not exist" in result.output


def test_cli_dry_run_shows_the_mask(tmp_path: Path, tiny_dir: Path) -> None:
    data = write_jsonl(tmp_path / "sft.jsonl", arithmetic_examples(6))
    result = CliRunner().invoke(
        _cli(), ["--data", str(data), "--out", str(tmp_path / "o"), "--model", str(tiny_dir), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "format markdown; 5 train / 1 eval examples" in result.output
    assert "<|im_start|>user" in result.output
    assert not (tmp_path / "o").exists()
