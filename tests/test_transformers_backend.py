"""The transformers backend on the real default model (slow), and the model conversion cache.

The slow tests share one loaded model (the first run converts the GGUF file, ~40 s); each test
wraps it in its own backend, whose batcher lives on that test's event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtime import model_store
from runtime.backends.base import BackendError, CompletionRequest, SamplingParams
from runtime.model_store import ModelFetchError, default_model_path, ensure_hf_model, hf_model_path
from runtime.settings import RuntimeSettings

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

from runtime.backends.transformers_backend import TransformersBackend

slow = pytest.mark.slow

COUNTRIES = "The capital of France is Paris.\nThe capital of Italy is Rome.\nThe capital of Germany is"


# -- the conversion cache (no model needed: the conversion itself is replaced) -----------------------


@pytest.fixture
def fake_gguf(tmp_path: Path) -> RuntimeSettings:
    settings = RuntimeSettings(cache_dir=tmp_path, default_model_package="mathcoder-no-such-package-x9")
    gguf = default_model_path(settings)
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF-stand-in")
    return settings


def _slow_fake_conversion(calls: list[Path]) -> Any:
    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)  # long enough for a second caller to arrive while this one holds the lock
        (out / "config.json").write_text("{}")

    return convert


def test_concurrent_callers_convert_once(fake_gguf: RuntimeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(model_store, "_convert_gguf", _slow_fake_conversion(calls))
    results: list[Path] = []
    # flock locks belong to open files, so threads exclude each other just as processes do.
    threads = [threading.Thread(target=lambda: results.append(ensure_hf_model(fake_gguf))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [hf_model_path(fake_gguf)] * 3
    assert (hf_model_path(fake_gguf) / "config.json").is_file()
    assert not list(hf_model_path(fake_gguf).parent.glob(".*tmp-*"))


def test_failed_conversion_leaves_nothing_and_stale_temp_folders_go(
    fake_gguf: RuntimeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf: Path, out: Path) -> None:
        (out / "half-written").write_text("x")
        raise ModelFetchError("conversion broke")

    target = hf_model_path(fake_gguf)
    stale = target.with_name(f".{target.name}.tmp-crashed")
    stale.mkdir()
    monkeypatch.setattr(model_store, "_convert_gguf", broken)
    with pytest.raises(ModelFetchError, match="conversion broke"):
        ensure_hf_model(fake_gguf)
    assert not target.exists()
    assert not list(target.parent.glob(".*tmp-*"))  # neither this attempt's folder nor the stale one


def test_load_errors_name_the_model(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"no-such-model.*does not exist"):
        TransformersBackend.load(str(tmp_path / "no-such-model"))
    with pytest.raises(BackendError, match=r"no config\.json"):
        TransformersBackend.load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(BackendError, match=f"could not load model {tmp_path}"):
        TransformersBackend.load(tmp_path)


# -- the real model --------------------------------------------------------------------------------


BASE = RuntimeSettings(adapter="none")  # the base model, whatever adapter the package ships


@pytest.fixture(scope="module")
def loaded() -> TransformersBackend:
    """The default base model, loaded once per module (its batcher is never started)."""
    return TransformersBackend.load(None, BASE, device="cpu")


@pytest.fixture
async def backend(loaded: TransformersBackend) -> AsyncIterator[TransformersBackend]:
    b = TransformersBackend(loaded.model, loaded.tokenizer, RuntimeSettings(), name=loaded.name)
    yield b
    await b.aclose()


def chat(backend: TransformersBackend, question: str) -> str:
    return backend.render_chat([{"role": "user", "content": question}])


@slow
def test_converted_model_is_cached_and_loads_fast(loaded: TransformersBackend) -> None:
    settings = RuntimeSettings()
    started = time.perf_counter()
    path = ensure_hf_model(settings)
    assert time.perf_counter() - started < 2.0
    assert path == hf_model_path(settings) == ensure_hf_model(settings)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (path / name).is_file(), name
    assert loaded.name == "transformers:SmolLM2-135M-Instruct.Q4_1"
    started = time.perf_counter()
    TransformersBackend.load(None, BASE, device="cpu")
    assert time.perf_counter() - started < 5.0  # the GGUF path takes ~40 s


@slow
def test_render_chat_and_count_tokens(loaded: TransformersBackend) -> None:
    prompt = chat(loaded, "What is 2+2?")
    assert prompt.startswith("<|im_start|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "What is 2+2?" in prompt
    text = "print(sum(range(10)))\n```output\n45\n```"
    assert loaded.count_tokens(text) == len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert loaded.count_tokens("") == 0


@slow
async def test_greedy_chat_ends_at_eos(backend: TransformersBackend) -> None:
    prompt = chat(backend, "What is 2+2?")
    out = await backend.complete(CompletionRequest(prompt=prompt, max_tokens=64))
    assert out.finish_reason == "eos"
    assert out.stop is None
    assert "4" in out.text
    assert "<|im_end|>" not in out.text
    assert out.prompt_tokens == backend.count_tokens(prompt)
    assert 0 < out.completion_tokens < 64


@slow
async def test_stop_string_cuts_the_text(backend: TransformersBackend) -> None:
    # "Germany" is in the prompt only: stop strings are looked for in the completion.
    request = CompletionRequest(prompt=COUNTRIES, stop=("Germany", "\n"), max_tokens=32)
    out = await backend.complete(request)
    assert out.finish_reason == "stop"
    assert out.stop == "\n"
    assert out.text == " Berlin."
    # A stop string spanning several tokens, inside a chat answer.
    prompt = chat(backend, "Repeat exactly: apple banana cherry")
    out = await backend.complete(CompletionRequest(prompt=prompt, stop=("banana",), max_tokens=32))
    assert (out.finish_reason, out.stop) == ("stop", "banana")
    assert out.text.endswith("apple ")
    assert "banana" not in out.text


@slow
async def test_token_budget(backend: TransformersBackend) -> None:
    out = await backend.complete(CompletionRequest(prompt=chat(backend, "What is 2+2?"), max_tokens=5))
    assert out.finish_reason == "length"
    assert out.completion_tokens == 5
    assert out.stop is None


@slow
async def test_concurrent_requests_are_batched_and_match_sequential(backend: TransformersBackend) -> None:
    questions = ["What is 2+2?", "Name three colors.", "Count from 1 to 10.", "Write a haiku about rain."]
    requests = [
        CompletionRequest(
            prompt=chat(backend, questions[i % 4]) if i < 6 else COUNTRIES,
            stop=("\n",) if i % 2 else (),
            max_tokens=12 if i % 3 == 0 else 24,
        )
        for i in range(8)
    ]
    sequential = [await backend.complete(r) for r in requests]
    calls_before = backend.stats.generate_calls
    together = await asyncio.gather(*(backend.complete(r) for r in requests))
    assert together == sequential
    assert backend.stats.generate_calls - calls_before < len(requests)
    assert max(backend.stats.batch_sizes) > 1
    reasons = {out.finish_reason for out in together}
    assert reasons >= {"stop", "length"}  # rows ending differently in one batch


@slow
async def test_sampling_is_per_row_and_seeded(backend: TransformersBackend) -> None:
    prompt = chat(backend, "Tell me a story about a dragon.")
    greedy = CompletionRequest(prompt=prompt, max_tokens=16)
    hot = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    sampled = CompletionRequest(prompt=prompt, max_tokens=16, sampling=hot)
    alone = await backend.complete(greedy)
    mixed = await asyncio.gather(
        backend.complete(greedy), backend.complete(sampled), backend.complete(sampled)
    )
    assert mixed[0] == alone  # sampled neighbours leave a greedy row alone
    assert mixed[1] == mixed[2]  # same seed, same batch: same draw
    assert mixed[1].completion_tokens == 16


@slow
async def test_static_cache_gives_the_same_text(loaded: TransformersBackend) -> None:
    static = TransformersBackend(loaded.model, loaded.tokenizer, RuntimeSettings(kv_cache="static"))
    dynamic = TransformersBackend(loaded.model, loaded.tokenizer, RuntimeSettings())
    assert static.static_cache and not static.compile  # never compiled on CPU
    requests = [
        CompletionRequest(prompt=chat(loaded, "What is 2+2?"), max_tokens=16),
        CompletionRequest(prompt=COUNTRIES, stop=("\n",), max_tokens=16),
        CompletionRequest(prompt=chat(loaded, "Name three colors."), max_tokens=8),
    ]
    try:
        want = await asyncio.gather(*(dynamic.complete(r) for r in requests))
        got = await asyncio.gather(*(static.complete(r) for r in requests))
    finally:
        await static.aclose()
        await dynamic.aclose()
    assert got == want
    assert list(static.stats.batch_sizes) == [3]  # padded to 4 rows inside; filler rows are not reported


@slow
async def test_event_loop_keeps_running_during_generation(backend: TransformersBackend) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    await backend.complete(CompletionRequest(prompt=COUNTRIES, max_tokens=48))
    elapsed = time.perf_counter() - started
    done.set()
    await ticker
    assert max(gaps) < max(0.5, elapsed / 4), (max(gaps), elapsed)


@slow
async def test_cancelled_caller_and_close(backend: TransformersBackend) -> None:
    request = CompletionRequest(prompt=COUNTRIES, stop=("\n",), max_tokens=16)
    first = asyncio.create_task(backend.complete(request))
    await asyncio.sleep(0)
    first.cancel()
    out = await backend.complete(request)  # the batcher survived the cancelled caller
    assert out.text == " Berlin."
    pending = asyncio.create_task(backend.complete(CompletionRequest(prompt=COUNTRIES, max_tokens=400)))
    await asyncio.sleep(0.5)  # running now
    started = time.perf_counter()
    await backend.aclose()
    assert time.perf_counter() - started < 5.0  # the running generate stopped early
    with pytest.raises(BackendError, match="closed"):
        await pending
    with pytest.raises(BackendError, match="closed"):
        await backend.complete(request)


def test_auto_dtype_is_bf16_only_where_rows_stay_independent_of_their_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AVX512-BF16: bf16; AVX2 (emulated) and AMX (batch-dependent rows): float32; a GPU: bf16."""
    from runtime import cpu
    from runtime.backends.transformers_backend import _resolve_dtype

    for flags, expected in [
        ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
        ({"avx2"}, torch.float32),
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}, torch.float32),
    ]:
        monkeypatch.setattr(cpu, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert _resolve_dtype("auto", torch.device("cpu")) == expected, flags
    assert _resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert _resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16  # an explicit choice stands
