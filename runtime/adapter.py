"""LoRA adapters that turn a base model into a runtime model: the folder layout and its card.

An adapter folder is what peft writes (``adapter_config.json``, ``adapter_model.safetensors``) plus
``mathcoder.json``, an :class:`AdapterCard` saying which base model it was trained on (by GGUF file
name and SHA-256, so an adapter is never applied to other weights), which prompt preset it was
trained with (entry points use it unless told otherwise), and how it scored.  The shipped default
adapter lives in ``runtime/adapters/<name>/`` (package data of the wheel); ``training.export_adapter``
writes such folders from ``mathcoder train`` runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, Field

from runtime.settings import RuntimeSettings

CARD_FILE = "mathcoder.json"
PACKAGED_ADAPTERS = Path(__file__).resolve().parent / "adapters"


class AdapterError(ValueError):
    """An adapter folder that is incomplete, or made for another base model."""


class AdapterCard(BaseModel):
    """``mathcoder.json`` of an adapter folder."""

    name: str
    base_model_file: str = Field(description="The GGUF file name of the base model.")
    base_model_sha256: str = Field(description="Its SHA-256: the adapter applies to these weights only.")
    preset: str = Field(description="The prompt preset the adapter was trained with (e.g. tir-sft).")
    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dtype: str = "float16"
    source_run: str | None = Field(default=None, description="The mathcoder train run it came from.")
    method: str = Field(
        default="lora", description="lora: trained as LoRA; svd: a low-rank extract of a full fine-tune."
    )
    gsm8k_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="This adapter's own accuracy on the full GSM8K test."
    )
    commit: str | None = None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(folder: Path) -> AdapterCard:
    """The card of an adapter folder, after checking the folder holds a whole adapter."""
    missing = [
        n
        for n in (CARD_FILE, "adapter_config.json", "adapter_model.safetensors")
        if not (folder / n).is_file()
    ]
    if missing:
        raise AdapterError(f"{folder} is not an adapter folder: {', '.join(missing)} missing")
    return AdapterCard.model_validate_json((folder / CARD_FILE).read_text(encoding="utf-8"))


def check_base(card: AdapterCard, base_gguf: Path) -> None:
    """Refuse to apply ``card``'s adapter to any other weights than those it was trained on."""
    actual = sha256_of(base_gguf)
    if actual != card.base_model_sha256:
        raise AdapterError(
            f"adapter {card.name!r} was trained on {card.base_model_file} (sha256 {card.base_model_sha256[:12]}…), "
            f"not on {base_gguf.name} (sha256 {actual[:12]}…); pass --adapter none (MATHCODER_ADAPTER=none) for the plain base model"
        )


def packaged_adapters() -> list[Path]:
    """Adapter folders shipped inside this package."""
    if not PACKAGED_ADAPTERS.is_dir():
        return []
    return sorted(p for p in PACKAGED_ADAPTERS.iterdir() if (p / CARD_FILE).is_file())


def resolve_adapter(settings: RuntimeSettings, model: str | Path | None) -> Path | None:
    """The adapter folder to apply, or None.

    ``settings.adapter``: ``none`` -> None; ``default`` -> the packaged adapter, only on the default
    model (``model`` None) and only if the package ships one; anything else is an adapter folder,
    applied to whatever model was asked for.
    """
    choice = settings.adapter
    if choice == "none":
        return None
    if choice == "default":
        shipped = packaged_adapters()
        return shipped[0] if model is None and shipped else None
    folder = Path(choice).expanduser()
    read_card(folder)  # a clear error now rather than a half-loaded model later
    return folder


FALLBACK_PRESET = "tir"
"""The preset of a model that says nothing about its own: the few-shot prompt any chat model follows."""


def model_preset(settings: RuntimeSettings, model: str | Path | None) -> str:
    """The prompt preset ``model`` was trained with: its adapter's (the shipped default adapter on the
    default model), else :data:`FALLBACK_PRESET`.  Entry points use it when the user names none."""
    try:
        folder = resolve_adapter(settings, model)
    except AdapterError:
        return FALLBACK_PRESET  # the backend reports a broken adapter itself, with the reason
    return read_card(folder).preset if folder is not None else FALLBACK_PRESET
