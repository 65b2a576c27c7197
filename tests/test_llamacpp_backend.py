"""The llamacpp backend against a real llama-server child serving the embedded default model: what
is its own (the prompt cache, the process's life, a named GGUF's tokenizer).  The contract every
backend keeps (stop strings, eos, length, seeds, cancellation) is in ``test_backend_conformance.py``.

Needs the ``llama-server`` binary (``make llama-server``; ``make test`` builds it and sets
``MATHCODER_TEST_LLAMACPP=require`` so that a missing binary fails instead of skipping).
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from support.llamacpp import llama_server_missing

from runtime.backends.base import BackendError, CompletionRequest
from runtime.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

pytestmark = pytest.mark.slow

if (missing := llama_server_missing()) is not None:
    pytest.skip(missing, allow_module_level=True)

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nCount from 1 to 20, separated by commas.<|im_end|>\n<|im_start|>assistant\n"
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def backend() -> AsyncIterator[LlamaCppBackend]:
    started = await asyncio.to_thread(
        LlamaCppBackend.launch, settings=LlamaCppSettings(parallel=4, ctx_per_slot=1024)
    )
    yield started
    await started.aclose()
    assert started.process.poll() is not None  # the engine process is gone after shutdown


module_loop = pytest.mark.asyncio(loop_scope="module")


@module_loop
async def test_concurrent_requests_share_the_server_and_its_cache(backend: LlamaCppBackend) -> None:
    before = backend.prompt_tokens_computed, backend.prompt_tokens_total
    requests = [CompletionRequest(prompt=PROMPT, max_tokens=16) for _ in range(6)]
    texts = [c.text for c in await asyncio.gather(*(backend.complete(r) for r in requests))]
    assert len(set(texts)) == 1  # greedy: the same text from every slot
    computed = backend.prompt_tokens_computed - before[0]
    total = backend.prompt_tokens_total - before[1]
    assert computed < total  # the repeated prompt came from the slots' caches


def test_the_servers_openmp_threads_spin_briefly(backend: LlamaCppBackend) -> None:
    """libgomp's threads spin 300,000 times at each barrier by default; beside another busy process
    that made generation 8-40x slower (docs/engines.md), so the server runs with a short spin."""
    pid = backend.process.pid
    assert "libgomp" in Path(f"/proc/{pid}/maps").read_text()  # the setting acts on this server
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"GOMP_SPINCOUNT={LlamaCppSettings().spin_count}".encode() in environment
    assert LlamaCppSettings().spin_count <= 10_000


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"needs a \.gguf model file"):
        LlamaCppBackend.launch(str(tmp_path / "nothing.gguf"))


def test_the_server_dies_with_a_sigkilled_host(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from runtime.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
        backend = LlamaCppBackend.launch(settings=LlamaCppSettings(parallel=1, ctx_per_slot=512))
        print(backend.process.pid, flush=True)
        time.sleep(600)
        """
    )
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    server_pid = int(host.stdout.readline())
    server = os.pidfd_open(server_pid)  # before the kill: the pid cannot be reused under us
    try:
        host.send_signal(signal.SIGKILL)
        host.wait()
        exited, _, _ = select.select([server], [], [], 10.0)  # readable once the process has exited
        assert exited, f"llama-server {server_pid} outlived its SIGKILLed host"
    finally:
        os.close(server)
        host.stdout.close()


@pytest.mark.asyncio
async def test_a_named_gguf_brings_its_own_tokenizer(tmp_path: Path) -> None:
    from runtime.model_store import ensure_default_model
    from runtime.settings import RuntimeSettings

    named = tmp_path / "named.gguf"
    named.symlink_to(ensure_default_model(RuntimeSettings()))
    backend = await asyncio.to_thread(
        LlamaCppBackend.launch, str(named), settings=LlamaCppSettings(parallel=1, ctx_per_slot=512)
    )
    try:
        done = await backend.complete(CompletionRequest(prompt=PROMPT, max_tokens=2))
        assert backend.tokenizer is not None and done.prompt_tokens == backend.count_tokens(PROMPT)
    finally:
        await backend.aclose()
