"""From ``sft.jsonl`` files to token ids and labels: reading, format checks, tokenisation, loss masks.

This module owns the step from text to tokens, and with it the loss mask.  An ``SftExample`` is the
rendered conversation cut into segments, each trained or masked; ``encode_example`` tokenises each
maximal run of equal flags on its own and concatenates the ids, so no token straddles a trained and
a masked character and the mask is exact by construction: a token is trained iff its characters
are.  That also matches inference, where the model always starts writing at a token boundary right
after the runtime's text (the prompt, or an execution output).  Masked tokens get the label -100.

The MathCoder format's delimiters (``<|code|>``, ``<|endofblock|>``, ...) are added to the tokenizer
as single tokens (``prepare_tokenizer``); the trainer then resizes the embeddings.  They are added
as *non-special* tokens on purpose: the runtime's transformers backend decodes completions with
``skip_special_tokens=True`` and finds the format's stop strings in that text, so special tokens
would vanish from what the runtime reads.

Problems with the data are errors that name the file and line (``TrainDataError``); degradations
that training survives -- examples dropped for length, examples that do not train the end-of-turn
token (the model may not learn to stop, as TRL warns) -- are ``TrainDataWarning`` with counts.
``show_mask`` prints an example with trained tokens in one colour and masked ones in another.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from rich.markup import escape

from runtime.formats import FORMATS, get_format
from runtime.formats.base import flag_runs
from runtime.formats.mathcoder import SPECIAL_TOKENS as MATHCODER_TOKENS
from training.generate.records import SftExample, SftSegment

IGNORE_INDEX = -100  # the label that PyTorch's cross entropy (and transformers' losses) skip


class TrainDataError(ValueError):
    """The training data cannot be used as given; the message names the file (and line)."""


class TrainDataWarning(UserWarning):
    """Training goes on, but some data was dropped or will teach the model something unintended."""


@dataclass(frozen=True)
class Encoded:
    """One tokenised example: ids and labels of equal length (-100 where no loss applies)."""

    id: str
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class EncodeStats:
    """What encoding kept and dropped; goes into ``train_results.json``."""

    examples: int = 0
    kept: int = 0
    dropped_overlong: int = 0
    truncated: int = 0
    dropped_untrained: int = 0
    eot_untrained: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    longest: int = 0
    warnings: list[str] = field(default_factory=list)


# -- reading --------------------------------------------------------------------------------------


def _open_text(path: Path) -> Iterator[str]:
    # Data travels to the GPU machine gzipped (its transfers are size-limited), so both are read.
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            yield from lines
    else:
        with path.open(encoding="utf-8") as lines:
            yield from lines


def load_sft(paths: Sequence[Path]) -> list[SftExample]:
    """Every ``SftExample`` of ``paths`` (JSONL, optionally ``.gz``), in file order.

    Raises ``TrainDataError`` for a missing file, an empty data set, or a malformed line
    (``file:line: ...``); blank lines are skipped.
    """
    if not paths:
        raise TrainDataError("no data files given; pass --data FILE (an sft.jsonl from `mathcoder generate`)")
    examples: list[SftExample] = []
    for path in paths:
        if not path.is_file():
            raise TrainDataError(f"data file {path} does not exist (or is not a file)")
        try:
            for number, line in enumerate(_open_text(path), start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TrainDataError(f"{where}: not valid JSON: {exc}") from None
                try:
                    examples.append(SftExample.model_validate(row))
                except ValidationError as exc:
                    problems = "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or '(row)'}: {e['msg']}" for e in exc.errors()
                    )
                    raise TrainDataError(
                        f"{where}: not an SftExample (fields id, format, segments=[{{text, train}}]): {problems}"
                    ) from None
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            raise TrainDataError(f"{path}: cannot be read: {type(exc).__name__}: {exc}") from exc
    if not examples:
        raise TrainDataError(f"no examples in {', '.join(map(str, paths))}")
    return examples


def resolve_format(examples: Sequence[SftExample], requested: str = "auto") -> str:
    """The trace format of the data set: ``requested``, or with ``auto`` the one all examples share."""
    found: dict[str, int] = {}
    for ex in examples:
        found[ex.format] = found.get(ex.format, 0) + 1
    unknown = sorted(set(found) - set(FORMATS))
    if unknown:
        raise TrainDataError(f"unknown trace format(s) {unknown} in the data; known: {sorted(FORMATS)}")
    if requested == "auto":
        if len(found) != 1:
            raise TrainDataError(
                f"the data mixes trace formats {found}; train one format at a time (or filter the files)"
            )
        return next(iter(found))
    if requested not in FORMATS:
        raise TrainDataError(f"unknown trace format {requested!r}; choose auto or one of {sorted(FORMATS)}")
    if set(found) != {requested}:
        raise TrainDataError(f"--format {requested} was asked for, but the data holds {found}")
    return requested


# -- the tokenizer ----------------------------------------------------------------------------------


def prepare_tokenizer(tokenizer: Any, fmt: str) -> list[str]:
    """Make the format's delimiters single tokens of ``tokenizer``; return those that were added.

    Only the MathCoder format has delimiters of its own; the Markdown format's ChatML markers are
    already the chat template's tokens in the models it is meant for (checked by ``check_tokenizer``).
    """
    if fmt != "mathcoder":
        return []
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in MATHCODER_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    return missing


def check_tokenizer(tokenizer: Any, fmt: str) -> list[str]:
    """Warnings about how the tokenizer treats the format's end-of-turn marker (empty if all is well)."""
    eot = get_format(fmt).end_of_turn
    problems: list[str] = []
    pieces = tokenizer.encode(eot, add_special_tokens=False)
    if len(pieces) != 1:
        problems.append(
            f"the tokenizer splits the end-of-turn marker {eot!r} into {len(pieces)} tokens; "
            "it is not one of this model's tokens, so the model may not learn to stop cleanly"
        )
    if fmt == "markdown" and tokenizer.eos_token != eot:
        problems.append(
            f"the tokenizer's eos token is {tokenizer.eos_token!r}, not {eot!r}: the runtime ends a Markdown "
            "turn at the model's eos token, so the trained model may not stop; use a ChatML model"
        )
    return problems


def _bos_prefix(tokenizer: Any) -> list[int]:
    """The BOS id that this tokenizer puts before a text, as the runtime's backend does; else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


# -- encoding -----------------------------------------------------------------------------------------


def merged_segments(example: SftExample) -> list[SftSegment]:
    """The example's segments with adjacent equal flags merged and empty ones left out."""
    runs: list[SftSegment] = []
    for seg in example.segments:
        if not seg.text:
            continue
        if runs and runs[-1].train == seg.train:
            runs[-1] = SftSegment(text=runs[-1].text + seg.text, train=seg.train)
        else:
            runs.append(SftSegment(text=seg.text, train=seg.train))
    return runs


def encode_example(example: SftExample, tokenizer: Any) -> Encoded:
    """Token ids and labels of one example (no length limit; see ``encode_all``)."""
    return _encode_many([example], tokenizer)[0]


def _encode_many(examples: Sequence[SftExample], tokenizer: Any) -> list[Encoded]:
    runs = [merged_segments(ex) for ex in examples]
    texts = [seg.text for segs in runs for seg in segs]
    # One batched call: the fast tokenizer encodes the runs in parallel (Rust).
    pieces: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    bos = _bos_prefix(tokenizer)
    bos_text = tokenizer.bos_token
    out: list[Encoded] = []
    at = 0
    for ex, segs in zip(examples, runs, strict=True):
        prefix = bos if bos and not (segs and segs[0].text.startswith(bos_text)) else []
        ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
        for seg in segs:
            piece = pieces[at]
            at += 1
            ids.extend(piece)
            labels.extend(piece if seg.train else [IGNORE_INDEX] * len(piece))
        out.append(Encoded(id=ex.id, input_ids=ids, labels=labels))
    return out


def encode_all(
    examples: Sequence[SftExample],
    tokenizer: Any,
    *,
    max_len: int,
    overlong: Literal["drop", "truncate"] = "drop",
    fmt: str | None = None,
) -> tuple[list[Encoded], EncodeStats]:
    """Encode ``examples``; drop or truncate those over ``max_len`` tokens and drop those with no
    trained token.  Every kind of loss is counted in the stats and raised as one ``TrainDataWarning``."""
    stats = EncodeStats(examples=len(examples))
    eot = get_format(fmt).end_of_turn if fmt is not None else None
    kept: list[Encoded] = []
    for ex, enc in zip(examples, _encode_many(examples, tokenizer), strict=True):
        if eot is not None:
            segs = merged_segments(ex)
            if not segs or not segs[-1].train or not segs[-1].text.endswith(eot):
                stats.eot_untrained += 1
        stats.longest = max(stats.longest, len(enc))
        if len(enc) > max_len:
            if overlong == "drop":
                stats.dropped_overlong += 1
                continue
            stats.truncated += 1
            enc = Encoded(id=enc.id, input_ids=enc.input_ids[:max_len], labels=enc.labels[:max_len])
        # The first label is never a prediction target (a causal LM predicts token t from those before it).
        if not any(label != IGNORE_INDEX for label in enc.labels[1:]):
            stats.dropped_untrained += 1
            continue
        kept.append(enc)
        stats.tokens += len(enc)
        stats.trained_tokens += enc.trained_tokens
    stats.kept = len(kept)
    n = stats.examples
    if stats.dropped_overlong:
        stats.warnings.append(
            f"{stats.dropped_overlong} of {n} examples are longer than max_len={max_len} tokens "
            f"(longest {stats.longest}) and were dropped; raise --max-len or use --overlong truncate"
        )
    if stats.truncated:
        stats.warnings.append(
            f"{stats.truncated} of {n} examples are longer than max_len={max_len} tokens (longest "
            f"{stats.longest}) and were truncated: their ends, end-of-turn included, are not trained"
        )
    if stats.dropped_untrained:
        stats.warnings.append(
            f"{stats.dropped_untrained} of {n} examples have no trained token and were dropped"
        )
    if stats.eot_untrained:
        stats.warnings.append(
            f"{stats.eot_untrained} of {n} examples do not end with a trained end-of-turn marker {eot!r}: "
            "the model may not learn to stop"
        )
    for message in stats.warnings:
        warnings.warn(message, TrainDataWarning, stacklevel=2)
    if not kept:
        raise TrainDataError(f"none of the {n} examples is usable (see the warnings above)")
    return kept, stats


def show_mask(encoded: Encoded, tokenizer: Any) -> str:
    """Rich markup of the example: trained tokens green, masked ones dim (nanochat's visualiser)."""
    parts: list[str] = []
    for start, end, trained in flag_runs([label != IGNORE_INDEX for label in encoded.labels]):
        text = tokenizer.decode(encoded.input_ids[start:end], clean_up_tokenization_spaces=False)
        style = "green" if trained else "dim"
        parts.append(f"[{style}]{escape(text)}[/{style}]")
    return "".join(parts)
