"""Turn a ``mathcoder train`` run into a small shippable LoRA adapter folder (``runtime.adapter``).

Two sources:

* a LoRA run saved unmerged (``--lora --no-lora-merge``): its adapter, cast to float16;
* full weights (a full fine-tune, or a merged LoRA run): a low-rank extract of the weight change.
  For every linear layer of the decoder, ``ΔW = W_tuned − W_base`` is factored by a truncated SVD,
  ``ΔW ≈ (U_r S_r) V_rᵀ``, which becomes ``lora_B = U_r S_r`` and ``lora_A = V_rᵀ`` with
  ``alpha = r`` (scale 1).  The share of ``‖ΔW‖_F²`` kept is reported; changes outside the linear
  layers (embeddings, norms) are not carried and are reported too, so the extract's own accuracy
  must be measured (the card has a field for it).

The adapter is written with peft (``LoraConfig`` + ``save_pretrained``), so any peft user can load it,
plus ``mathcoder.json``: base-model hash, the prompt preset trained with, rank, method.

``python -m training.export_adapter RUN_DIR OUT_DIR [--rank 32] [--preset tir-sft]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from runtime.adapter import CARD_FILE, AdapterCard, sha256_of
from runtime.model_store import default_model_path
from runtime.settings import RuntimeSettings

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _commit() -> str | None:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    if not tensors:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    return tensors


def svd_extract(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """peft-named lora_A/lora_B tensors (float16) approximating tuned − base on the linear layers."""
    out: dict[str, torch.Tensor] = {}
    kept = total = outside = 0.0
    for name, w_tuned in tuned.items():
        w_base = base.get(name)
        if w_base is None:
            continue
        delta = w_tuned.double() - w_base.double()
        energy = float((delta**2).sum())
        module = name.removesuffix(".weight")
        if not (name.endswith(".weight") and module.rsplit(".", 1)[-1] in LINEAR):
            outside += energy
            continue
        total += energy
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        r = min(rank, s.numel())
        kept += float((s[:r] ** 2).sum())
        prefix = f"base_model.model.{module}"
        out[f"{prefix}.lora_B.weight"] = (u[:, :r] * s[:r]).to(torch.float16).contiguous()
        out[f"{prefix}.lora_A.weight"] = vh[:r].to(torch.float16).contiguous()
    stats = {
        "linear_delta_energy_kept": kept / total if total else 1.0,
        "delta_energy_outside_linear": outside / (outside + total) if outside + total else 0.0,
    }
    return out, stats


def export(
    run_dir: Path,
    out: Path,
    *,
    rank: int = 32,
    preset: str = "tir-sft",
    name: str | None = None,
    settings: RuntimeSettings | None = None,
) -> AdapterCard:
    """Write the adapter folder ``out`` from the train run ``run_dir``; returns its card."""
    settings = settings or RuntimeSettings()
    model_dir = run_dir / "model"
    results = json.loads((run_dir / "train_results.json").read_text(encoding="utf-8"))
    base_dir = Path(results["model"])
    gguf = default_model_path(settings)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    extra: dict[str, Any] = {}
    if (model_dir / "adapter_config.json").is_file():
        config = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
        tensors = {k: v.to(torch.float16).contiguous() for k, v in _weights(model_dir).items()}
        rank, alpha, method = int(config["r"]), float(config["lora_alpha"]), "lora"
    else:
        tensors, extra = svd_extract(_weights(base_dir), _weights(model_dir), rank)
        alpha, method = float(rank), "svd"
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "target_modules": list(LINEAR),
        }
    config["base_model_name_or_path"] = gguf.name
    config["inference_mode"] = True
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    card = AdapterCard(
        name=name or out.name,
        base_model_file=gguf.name,
        base_model_sha256=sha256_of(gguf),
        preset=preset,
        rank=rank,
        alpha=alpha,
        source_run=str(results.get("name")),
        method=method,
        commit=_commit(),
    )
    (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if extra:
        (tmp / "extract.json").write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a mathcoder train run as a float16 LoRA adapter.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rank", type=int, default=32, help="Rank of the SVD extract of full weights.")
    parser.add_argument("--preset", default="tir-sft", help="The prompt preset the run was trained with.")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    card = export(args.run_dir, args.out, rank=args.rank, preset=args.preset, name=args.name)
    size = (args.out / "adapter_model.safetensors").stat().st_size
    print(json.dumps({"adapter": str(args.out), "bytes": size, **card.model_dump()}))


if __name__ == "__main__":
    main()
