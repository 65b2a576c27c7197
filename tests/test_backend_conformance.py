"""One conformance suite for every generating backend present: the same requests, the same answers.

Each backend the runtime can run here — transformers (in process) and llamacpp (a ``llama-server``
child; ``make test`` builds it and sets ``MATHCODER_TEST_LLAMACPP=require``) — serves the real
default model and must keep the loop's contract: a stop string that spans tokens ends the text
before it and is named; the end of the model's turn is ``eos``; the token budget is ``length`` with
exactly that many tokens; sampling is per row and seeded, also inside one batch; concurrent requests
share engine steps; a cancelled caller stops its generation and the backend goes on serving; a
fine-tuned model folder loads through the same path; nothing of the engine outlives ``aclose``.
vLLM (a GPU engine, never present on these machines) is not in it yet: its engine-step and
in-flight probes are still to be written, with a GPU to run them.  The openai backend is the client
of such servers and has its own suite (``test_openai_backend.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.llamacpp import llama_server_missing
from support.train import build_tiny_model

from runtime.backends.base import Backend, BackendError, CompletionRequest, SamplingParams
from runtime.backends.factory import load_backend
from runtime.settings import RuntimeSettings

pytestmark = pytest.mark.slow
module_loop = pytest.mark.asyncio(loop_scope="module")


def _kinds() -> list[Any]:
    missing = llama_server_missing()
    llamacpp = pytest.param("llamacpp", marks=pytest.mark.skip(reason=missing)) if missing else "llamacpp"
    return ["transformers", llamacpp]


def chat(question: str) -> str:
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


COUNT = chat("Count from 1 to 30, separated by commas.")
BASE = RuntimeSettings(adapter="none")  # the base model, whatever adapter the package ships


def _launch(kind: str, model: str | None = None, settings: RuntimeSettings = BASE) -> Backend:
    if kind == "llamacpp":
        from runtime.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

        return LlamaCppBackend.launch(
            model, settings, settings=LlamaCppSettings(parallel=8, ctx_per_slot=1024)
        )
    return load_backend(kind, model, None, settings)


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=_kinds())
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    started = await asyncio.to_thread(_launch, request.param)
    yield started
    await started.aclose()


async def engine_steps(backend: Backend) -> int:
    """Engine steps so far: ``generate`` calls (transformers), decode calls (llama.cpp)."""
    metrics = getattr(backend, "metrics", None)
    if metrics is not None:
        return int((await metrics())["n_decode_total"])
    return int(backend.stats.generate_calls)  # type: ignore[attr-defined]


async def until(condition: Any, limit_s: float, what: str) -> None:
    """Poll ``await condition()`` until true; fail naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def in_flight(backend: Backend) -> int:
    metrics = getattr(backend, "metrics", None)
    if metrics is not None:
        return int((await metrics())["requests_processing"])
    return len(backend._inflight)  # type: ignore[attr-defined]


async def _running(backend: Backend) -> bool:
    return await in_flight(backend) > 0


async def _idle(backend: Backend) -> bool:
    return await in_flight(backend) == 0


@module_loop
async def test_a_stop_string_spanning_tokens_ends_the_text_and_is_named(backend: Backend) -> None:
    full = await backend.complete(CompletionRequest(prompt=COUNT, max_tokens=48))
    # A stop string of several tokens that first occurs mid-text, taken from the greedy text itself.
    at = next(
        i for i in range(6, len(full.text) - 5)
        if full.text.index(full.text[i : i + 5]) == i and backend.count_tokens(full.text[i : i + 5]) > 1
    )  # fmt: skip
    stop = full.text[at : at + 5]
    done = await backend.complete(CompletionRequest(prompt=COUNT, max_tokens=48, stop=("no such", stop)))
    assert (done.finish_reason, done.stop) == ("stop", stop)
    assert done.text == full.text[:at]


@module_loop
async def test_end_of_turn_is_eos(backend: Backend) -> None:
    done = await backend.complete(CompletionRequest(prompt=chat("Say only the word yes."), max_tokens=200))
    assert done.finish_reason == "eos" and done.stop is None and done.completion_tokens < 200


@module_loop
async def test_the_budget_is_length_with_exactly_that_many_tokens(backend: Backend) -> None:
    done = await backend.complete(CompletionRequest(prompt=COUNT, max_tokens=7))
    assert done.finish_reason == "length" and done.completion_tokens == 7
    assert done.prompt_tokens == backend.count_tokens(COUNT)


@module_loop
async def test_sampling_is_per_row_and_seeded_inside_one_batch(backend: Backend) -> None:
    prompt = chat("Write a short poem about the sea.")

    def sampled(seed: int) -> CompletionRequest:
        return CompletionRequest(
            prompt=prompt, max_tokens=24, sampling=SamplingParams(temperature=1.0, seed=seed)
        )

    greedy = CompletionRequest(prompt=prompt, max_tokens=24)
    alone = (await backend.complete(greedy)).text
    rows = await asyncio.gather(*(backend.complete(r) for r in (sampled(1), sampled(2), sampled(1), greedy)))
    one, two, one_again, greedy_row = (r.text for r in rows)
    assert one == one_again  # the same seed, the same sample, in one batch
    assert one != two
    assert greedy_row == alone  # a greedy row is untouched by its sampled neighbours


@module_loop
async def test_concurrent_requests_share_engine_steps(backend: Backend) -> None:
    requests = [
        CompletionRequest(prompt=chat(f"Count from {i} to {i + 20}."), max_tokens=16) for i in range(6)
    ]
    before = await engine_steps(backend)
    done = await asyncio.gather(*(backend.complete(r) for r in requests))
    steps = await engine_steps(backend) - before
    if getattr(backend, "metrics", None) is not None:
        # One at a time, every token of every request would be a decode step of its own.
        assert steps < sum(d.completion_tokens for d in done)
    else:
        assert steps < len(requests)


@module_loop
async def test_a_cancelled_caller_stops_its_generation_and_the_backend_goes_on(backend: Backend) -> None:
    long = asyncio.create_task(backend.complete(CompletionRequest(prompt=COUNT, max_tokens=1000)))
    await until(lambda: _running(backend), 30, "the generation never started")
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    # Seconds, not the budget: 1,000 tokens take a minute here.  Loose for a loaded 2-core machine.
    await until(lambda: _idle(backend), 5.0, "the cancelled generation is still running after 5 s")
    done = await backend.complete(CompletionRequest(prompt=COUNT, max_tokens=4))
    assert done.completion_tokens == 4


@module_loop
async def test_streamed_pieces_join_to_the_completion_and_never_show_a_stop(backend: Backend) -> None:
    full = await backend.complete(CompletionRequest(prompt=COUNT, max_tokens=48))
    stop = full.text[20:25]  # a stop string taken from the greedy text, mid-way
    request = CompletionRequest(prompt=COUNT, max_tokens=48, stop=(stop,))
    pieces: list[str] = []
    final = None
    async for item in backend.stream(request):
        if isinstance(item, str):
            pieces.append(item)
        else:
            final = item
    assert final is not None and (final.finish_reason, final.stop) == ("stop", stop)
    assert "".join(pieces) == final.text == full.text[: full.text.index(stop)]
    assert len(pieces) > 5  # token by token, not the finished text in one piece
    assert not any(
        stop[:n] in piece for piece in pieces for n in range(len(stop), 2, -1) if piece.endswith(stop[:n])
    )


@module_loop
async def test_batched_rows_stream_their_own_tokens_at_once(backend: Backend) -> None:
    """Two rows of one batch: each yields its first piece before either has finished."""
    firsts: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]
    done: list[bool] = [False, False]

    async def row(i: int) -> bool:
        seen_other_first = False
        request = CompletionRequest(prompt=chat(f"Count from {i} to {i + 40}."), max_tokens=40)
        async for item in backend.stream(request):
            if isinstance(item, str):
                firsts[i].set()
                seen_other_first = seen_other_first or (firsts[1 - i].is_set() and not done[1 - i])
        done[i] = True
        return seen_other_first

    overlapped = await asyncio.gather(row(0), row(1))
    assert all(overlapped), "a row's tokens came only after the other row had finished"


@module_loop
async def test_leaving_a_stream_stops_its_generation(backend: Backend) -> None:
    async with contextlib.aclosing(backend.stream(CompletionRequest(prompt=COUNT, max_tokens=1000))) as items:
        async for item in items:
            assert isinstance(item, str)  # the first piece: well before the budget
            break
    await until(lambda: _idle(backend), 5.0, "the abandoned stream is still generating after 5 s")


@pytest.mark.parametrize("kind", _kinds())
async def test_a_fine_tuned_folder_loads_through_the_same_path(kind: str, tmp_path: Path) -> None:
    from runtime.model_store import ensure_hf_model

    # A trained model folder as `mathcoder train` writes it (config, safetensors, tokenizer),
    # tiny, with the default model's tokenizer (one llama.cpp's converter recognises).
    folder = build_tiny_model(tmp_path / "model", tokenizer_from=ensure_hf_model(RuntimeSettings()))
    settings = RuntimeSettings(cache_dir=tmp_path / "cache", adapter="none")
    backend = await asyncio.to_thread(_launch, kind, str(folder), settings)
    try:
        done = await backend.complete(CompletionRequest(prompt=COUNT, max_tokens=6))
        assert done.completion_tokens <= 6 and done.prompt_tokens == backend.count_tokens(COUNT)
        if kind == "llamacpp":
            converted = backend.model  # type: ignore[attr-defined]
            assert converted.is_file() and converted.is_relative_to(tmp_path / "cache")
            assert converted.stat().st_size < 20 << 20  # the tiny model, not the default one
    finally:
        await backend.aclose()
    if kind == "llamacpp":  # converted once: the second launch takes the cached file
        stamp = converted.stat().st_mtime_ns
        again = await asyncio.to_thread(_launch, kind, str(folder), settings)
        await again.aclose()
        assert again.model == converted and converted.stat().st_mtime_ns == stamp  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", _kinds())
async def test_nothing_of_the_engine_outlives_aclose(kind: str) -> None:
    backend = await asyncio.to_thread(_launch, kind)
    pending = asyncio.create_task(backend.complete(CompletionRequest(prompt=COUNT, max_tokens=1000)))
    await until(lambda: _running(backend), 30, "the generation never started")
    await backend.aclose()
    with pytest.raises((BackendError, asyncio.CancelledError)):
        await pending
    with pytest.raises(BackendError):
        await backend.complete(CompletionRequest(prompt=COUNT, max_tokens=4))
    process = getattr(backend, "process", None)
    if process is not None:
        assert process.poll() is not None  # the server process is gone
    else:
        assert backend._executor._shutdown  # type: ignore[attr-defined]  # the generate thread is gone
