"""The backend factory: which engine ``auto`` picks and why, and clear errors for bad choices."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support.llamacpp import llama_server_missing

from runtime.backends.factory import BackendChoiceError, BackendSpec, check_backend, resolve_kind


def test_an_unknown_kind_lists_every_kind_and_what_it_needs() -> None:
    with pytest.raises(
        BackendChoiceError, match=r"unknown backend 'llama'; choose one of auto, transformers"
    ):
        check_backend("llama")
    with pytest.raises(BackendChoiceError, match="needs a base URL and a model name"):
        BackendSpec(kind="openai", model="m")


def test_auto_is_llamacpp_on_a_cpu_where_the_server_is_built() -> None:
    if (missing := llama_server_missing()) is not None:
        pytest.skip(missing)
    kind, reason = resolve_kind(None)
    assert kind == "llamacpp" and reason.endswith("llama-server")


def test_auto_falls_back_to_transformers_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A model llama.cpp cannot serve: a hub id, a folder without weights.
    assert resolve_kind("org/some-model") == (
        "transformers",
        "org/some-model is neither a .gguf file nor a local Hugging Face folder",
    )
    (tmp_path / "config.json").write_text("{}")
    assert resolve_kind(str(tmp_path))[0] == "transformers"
    # No server binary: the reason says how to build one.
    broken = tmp_path / "llama-server"
    broken.write_text("")
    os.chmod(broken, stat.S_IRUSR)  # not executable
    monkeypatch.setenv("MATHCODER_LLAMA_BINARY", str(broken))
    kind, reason = resolve_kind(None)
    assert kind == "transformers" and f"MATHCODER_LLAMA_BINARY={broken} is not an executable file" in reason
