"""Adapter folders: the SVD extract of a full fine-tune, the card, and the base-model check."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from runtime.adapter import AdapterCard, AdapterError, check_base, read_card, sha256_of  # noqa: E402
from training.export_adapter import svd_extract  # noqa: E402


def test_svd_extract_recovers_a_low_rank_change_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    base = {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 12, generator=gen),
        "model.layers.0.mlp.down_proj.weight": torch.randn(12, 20, generator=gen),
        "model.embed_tokens.weight": torch.randn(30, 12, generator=gen),
    }
    delta_q = torch.randn(16, 2, generator=gen) @ torch.randn(2, 12, generator=gen)  # rank 2
    tuned = {
        "model.layers.0.self_attn.q_proj.weight": base["model.layers.0.self_attn.q_proj.weight"] + delta_q,
        "model.layers.0.mlp.down_proj.weight": base["model.layers.0.mlp.down_proj.weight"].clone(),
        "model.embed_tokens.weight": base["model.embed_tokens.weight"] + 0.1,
    }
    tensors, stats = svd_extract(base, tuned, rank=4)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    b, a = tensors[f"{prefix}.lora_B.weight"].float(), tensors[f"{prefix}.lora_A.weight"].float()
    assert b.shape == (16, 4) and a.shape == (4, 12)
    assert torch.allclose(b @ a, delta_q, atol=2e-2)  # float16 storage
    assert stats["linear_delta_energy_kept"] == pytest.approx(1.0)
    # The embedding change (30 x 12 entries of 0.1) is not carried, and the stats say how much that is.
    outside = 30 * 12 * 0.01
    expected = outside / (outside + float((delta_q.double() ** 2).sum()))
    assert stats["delta_energy_outside_linear"] == pytest.approx(expected, rel=1e-4)
    assert not any("embed_tokens" in k for k in tensors)


def test_svd_extract_keeps_only_the_top_directions() -> None:
    gen = torch.Generator().manual_seed(1)
    base = {"model.layers.0.mlp.up_proj.weight": torch.zeros(8, 8)}
    delta = torch.diag(torch.tensor([8.0, 4.0, 2.0, 1.0, 0, 0, 0, 0]))
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
    tuned = {"model.layers.0.mlp.up_proj.weight": q @ delta @ q.T}
    _, stats = svd_extract(base, tuned, rank=2)
    assert stats["linear_delta_energy_kept"] == pytest.approx((64 + 16) / (64 + 16 + 4 + 1), rel=1e-6)


def _card(folder: Path, base: Path) -> AdapterCard:
    card = AdapterCard(
        name="t",
        base_model_file=base.name,
        base_model_sha256=sha256_of(base),
        preset="tir-sft",
        rank=2,
        alpha=4,
    )
    folder.mkdir()
    (folder / "mathcoder.json").write_text(card.model_dump_json())
    return card


def _complete_folder(tmp_path: Path, base_name: str, weights: bytes) -> Path:
    """An adapter folder with its card (for a base file of ``weights``) and empty peft files."""
    base = tmp_path / base_name
    base.write_bytes(weights)
    folder = tmp_path / "adapter"
    _card(folder, base)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_an_adapter_is_applied_only_to_its_own_base(tmp_path: Path) -> None:
    base = tmp_path / "base.gguf"
    base.write_bytes(b"weights")
    card = _card(tmp_path / "adapter", base)
    check_base(card, base)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"other weights")
    with pytest.raises(AdapterError, match="--adapter none"):
        check_base(card, other)


def test_an_incomplete_adapter_folder_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.gguf"
    base.write_bytes(b"weights")
    _card(tmp_path / "adapter", base)
    with pytest.raises(AdapterError, match=r"adapter_config.json, adapter_model.safetensors missing"):
        read_card(tmp_path / "adapter")


# peft reads transformers' deprecated is_gradient_checkpointing (as in tests/test_train_run.py).
_PEFT_COMPAT = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-4 LoRA with random (non-zero) weights on the default model, with its card."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from runtime.model_store import default_model_path, ensure_hf_model
    from runtime.settings import RuntimeSettings

    torch.manual_seed(0)
    warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
    base = AutoModelForCausalLM.from_pretrained(str(ensure_hf_model(RuntimeSettings())), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter") / "random"
    get_peft_model(base, config).save_pretrained(str(folder))
    gguf = default_model_path(RuntimeSettings())
    card = AdapterCard(
        name="random",
        base_model_file=gguf.name,
        base_model_sha256=sha256_of(gguf),
        preset="tir-sft",
        rank=4,
        alpha=8,
    )
    (folder / "mathcoder.json").write_text(card.model_dump_json())
    return folder


@pytest.mark.slow
@_PEFT_COMPAT
def test_the_transformers_backend_merges_an_adapter_into_the_default_model(random_adapter: Path) -> None:
    import asyncio

    from runtime.backends.base import CompletionRequest
    from runtime.backends.transformers_backend import TransformersBackend
    from runtime.settings import RuntimeSettings

    request = CompletionRequest(
        prompt="<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", max_tokens=8
    )

    async def complete(adapter: str) -> tuple[str, str]:
        backend = TransformersBackend.load(None, RuntimeSettings(adapter=adapter))
        try:
            return backend.name, (await backend.complete(request)).text
        finally:
            await backend.aclose()

    base_name, base_text = asyncio.run(complete("none"))
    tuned_name, tuned_text = asyncio.run(complete(str(random_adapter)))
    assert tuned_name == base_name + "+random"
    assert tuned_text != base_text  # the adapter's weights are in the forward pass


def test_an_adapter_for_other_weights_is_refused_by_the_backend(tmp_path: Path) -> None:
    from runtime.backends.base import BackendError
    from runtime.backends.transformers_backend import TransformersBackend
    from runtime.settings import RuntimeSettings

    folder = _complete_folder(tmp_path, "other.gguf", b"not the default model")
    with pytest.raises(BackendError, match=r"was trained on other\.gguf"):
        TransformersBackend.load(None, RuntimeSettings(adapter=str(folder)))


def test_entry_points_take_the_preset_the_adapter_was_trained_with(tmp_path: Path) -> None:
    from runtime.adapter import FALLBACK_PRESET, model_preset
    from runtime.settings import RuntimeSettings

    folder = _complete_folder(tmp_path, "base.gguf", b"weights")
    assert model_preset(RuntimeSettings(adapter=str(folder)), None) == "tir-sft"
    assert model_preset(RuntimeSettings(adapter=str(folder)), "some/model") == "tir-sft"  # asked for
    assert model_preset(RuntimeSettings(adapter="none"), None) == FALLBACK_PRESET == "tir"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_llamacpp_backend_applies_an_adapter_to_the_default_model(random_adapter: Path) -> None:
    import asyncio

    from support.llamacpp import llama_server_missing

    from runtime.backends.base import CompletionRequest
    from runtime.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
    from runtime.settings import RuntimeSettings

    if (missing := llama_server_missing()) is not None:
        pytest.skip(missing)
    request = CompletionRequest(
        prompt="<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", max_tokens=8
    )
    small = LlamaCppSettings(parallel=1, ctx_per_slot=512)

    async def complete(adapter: str) -> tuple[Path | None, str]:
        backend = await asyncio.to_thread(
            LlamaCppBackend.launch, None, RuntimeSettings(adapter=adapter), settings=small
        )
        try:
            return backend.lora, (await backend.complete(request)).text
        finally:
            await backend.aclose()

    base_lora, base_text = await complete("none")
    tuned_lora, tuned_text = await complete(str(random_adapter))
    assert base_lora is None and tuned_lora is not None and tuned_lora.suffix == ".gguf"  # converted once
    assert tuned_text != base_text  # the adapter's weights are in the forward pass
