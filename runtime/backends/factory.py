"""The one way to build a model backend from its kind: the CLI, the server and Ray workers all come here.

``BACKEND_KINDS`` are the kinds a user chooses (``--backend``, ``MATHCODER_SERVER_BACKEND``);
``scripted`` (a replay script, ``runtime.backends.scripted``) is for tests and dry runs.
``check_backend`` validates a choice without loading anything; ``load_backend`` builds it;
``BackendSpec`` is a picklable, validated recipe that each Ray worker builds its own backend from.
Every error is a plain ``BackendChoiceError`` (a ``ValueError``) whose message lists the valid kinds
and what each needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from runtime.backends.base import Backend
    from runtime.backends.scripted import ScriptedBackend
    from runtime.settings import RuntimeSettings

__all__ = [
    "BACKEND_KINDS",
    "BackendChoiceError",
    "BackendKind",
    "BackendSpec",
    "check_backend",
    "load_backend",
    "scripted_backend",
]

BackendKind = Literal["transformers", "openai", "vllm", "llamacpp"]
BACKEND_KINDS: tuple[str, ...] = get_args(BackendKind)
NEEDS = {
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

    def __post_init__(self) -> None:
        check_backend(self.kind, self.model, self.base_url)

    def build(self) -> Backend:
        return load_backend(self.kind, self.model, self.base_url, script=self.script)
