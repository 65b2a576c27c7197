"""The one way to build a model backend from its kind: the CLI, the server and Ray workers all come here.

``BACKEND_KINDS`` are the kinds a user chooses (``--backend``, ``MATHCODER_SERVER_BACKEND``);
``scripted`` (a replay script, ``runtime.backends.scripted``) is for tests and dry runs.  ``auto``,
the default, is the fastest engine this machine has for the model asked for
(:func:`resolve_kind`): on a CPU, llama.cpp's server when ``make llama-server`` built it and the
model is one it can serve (the default model, a ``.gguf`` file, a local Hugging Face folder, which it
converts once); otherwise transformers.  Issue #15 measured llama.cpp ~4x faster for a single stream
on these 2-core machines and faster batched too (``benchmarks/generation_bench.py``).
``check_backend`` validates a choice without loading anything; ``load_backend`` builds it;
``BackendSpec`` is a picklable, validated recipe that each Ray worker builds its own backend from.
Every error is a plain ``BackendChoiceError`` (a ``ValueError``) whose message lists the valid kinds
and what each needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from runtime.backends.base import Backend
    from runtime.backends.scripted import ScriptedBackend
    from runtime.settings import RuntimeSettings

logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND_KINDS",
    "BackendChoiceError",
    "BackendKind",
    "BackendSpec",
    "check_backend",
    "load_backend",
    "resolve_kind",
    "scripted_backend",
]

BackendKind = Literal["auto", "transformers", "openai", "vllm", "llamacpp"]
BACKEND_KINDS: tuple[str, ...] = get_args(BackendKind)
NEEDS = {
    "auto": "nothing: llamacpp where it is built and serves the model, else transformers",
    "transformers": "a model path or hub id (default: the embedded SmolLM2-135M)",
    "openai": "a server URL (base_url) and a model name",
    "vllm": "a model path or hub id (default: the embedded SmolLM2-135M)",
    "llamacpp": "a .gguf model file (default: the embedded SmolLM2-135M) and a llama-server built by "
    "`make llama-server`",
}


class BackendChoiceError(ValueError):
    """A backend kind that does not exist, or one given without what it needs."""


def _kinds() -> str:
    return "; ".join(f"{kind} needs {what}" for kind, what in NEEDS.items())


def check_backend(kind: str, model: str | None = None, base_url: str | None = None) -> None:
    """Raise ``BackendChoiceError`` unless ``kind`` (with ``model``/``base_url``) can be built."""
    if kind == "scripted":
        return
    if kind not in BACKEND_KINDS:
        raise BackendChoiceError(
            f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)} ({_kinds()})"
        )
    if kind == "openai" and (base_url is None or model is None):
        raise BackendChoiceError("backend 'openai' needs a base URL and a model name (--base-url, --model)")


def load_backend(
    kind: str,
    model: str | None = None,
    base_url: str | None = None,
    settings: RuntimeSettings | None = None,
    *,
    script: dict[str, list[Any]] | None = None,
) -> Backend:
    """The backend called ``kind``; ``settings`` (default: from the environment) say where models are cached."""
    check_backend(kind, model, base_url)
    if kind == "scripted":
        if script is None:
            raise BackendChoiceError("backend 'scripted' needs a script (--script FILE)")
        return scripted_backend(script)
    from runtime.settings import RuntimeSettings

    settings = settings or RuntimeSettings()
    if kind == "auto":
        kind, reason = resolve_kind(model)
        logger.info("backend auto: %s (%s)", kind, reason)
    if kind == "transformers":
        from runtime.backends.transformers_backend import TransformersBackend

        return TransformersBackend.load(model, settings)
    if kind == "openai":
        from runtime.backends.openai_backend import OpenAIBackend

        assert base_url is not None and model is not None  # check_backend
        return OpenAIBackend(base_url=base_url, model=model)
    if kind == "llamacpp":
        from runtime.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend.launch(model, settings)
    from runtime.backends.vllm_backend import VLLMBackend

    return VLLMBackend.load(model, settings)


def resolve_kind(model: str | None) -> tuple[str, str]:
    """What ``auto`` means for ``model`` on this machine: the kind, and why (for the log)."""
    from runtime.backends.base import BackendError
    from runtime.backends.llamacpp import LlamaCppSettings, find_server_binary, servable

    try:
        import torch

        if torch.cuda.is_available():
            return "transformers", "a GPU is present; llama-server is the CPU engine"
    except ImportError:
        pass
    if model is not None and not servable(Path(model).expanduser()):
        return "transformers", f"{model} is neither a .gguf file nor a local Hugging Face folder"
    try:
        binary = find_server_binary(LlamaCppSettings())
    except BackendError as exc:  # not built: the message says how to build it
        return "transformers", str(exc)
    return "llamacpp", f"{binary}"


def scripted_backend(script: dict[str, list[Any]]) -> ScriptedBackend:
    """A replay backend from ``{problem text: [step text | {text, eos, delay_s}]}`` (tests, dry runs)."""
    from runtime.backends.scripted import ScriptedBackend, Step

    return ScriptedBackend(
        {q: [s if isinstance(s, str) else Step(**s) for s in steps] for q, steps in script.items()}
    )


@dataclass(frozen=True)
class BackendSpec:
    """How to build a backend (checked when made): ``kind`` as ``--backend`` takes it, or ``scripted``."""

    kind: str
    model: str | None = None
    base_url: str | None = None
    script: dict[str, list[Any]] | None = None  # the replay script of kind "scripted"
    settings: RuntimeSettings | None = None  # the adapter and engine settings; None: the environment's

    def __post_init__(self) -> None:
        check_backend(self.kind, self.model, self.base_url)

    def build(self) -> Backend:
        return load_backend(self.kind, self.model, self.base_url, self.settings, script=self.script)
