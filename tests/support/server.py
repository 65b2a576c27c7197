"""The harness the server tests share (this module holds no tests).

``LiveServer`` (``benchmarks.engine_server``) runs a real uvicorn server on a loopback port in a
thread.  ``ScriptBook`` is the test
double of a model: a stateless replay, answering by the problem in the prompt and the number of
cells already run, so one script serves any number of requests; steps may wait on gates that a
test opens, which is how tests hold a trajectory at a known point without sleeping.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from benchmarks.engine_server import LiveServer as LiveServer  # re-exported: the tests' name
from runtime.backends.base import BackendError, Completion, CompletionRequest
from runtime.backends.scripted import ChatMLWords
from runtime.backends.stops import cut_at_stop
from runtime.server import ServerSettings
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

T = TypeVar("T")

SOLVE_KEY = "sk-solve-0123456789abcdef"
EXEC_KEY = "sk-exec-0123456789abcdef"
BOTH_KEY = "sk-both-0123456789abcdef"
OTHER_KEY = "sk-other-0123456789abcdef"
KEYS = f"{SOLVE_KEY} solve solver;{EXEC_KEY} execute executor;{BOTH_KEY} solve,execute both;{OTHER_KEY} solve,execute other"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sandbox(uid_base: int, **overrides: Any) -> SandboxSettings:
    """Test kernels: uids from ``uid_base`` (each module its own range), a run folder of their own."""
    base = SandboxSettings()
    values: dict[str, Any] = {
        "pool_size": 2,
        "max_kernels": 8,
        "cell_timeout_s": 5,
        "interrupt_grace_s": 1,
        "uid_base": uid_base,
        "run_dir": base.run_dir / "test-server" / str(uid_base),
    }
    return base.model_copy(update={**values, **overrides})


def settings(**overrides: Any) -> ServerSettings:
    """Server settings for tests: the test keys, small bounds, fast keep-alives."""
    values: dict[str, Any] = {
        "api_keys": KEYS,
        "max_running": 8,
        "max_queued": 8,
        "per_key_concurrency": 6,
        "keepalive_s": 0.25,
        "max_rounds": 4,
        "max_tokens": 512,
        "max_sessions": 3,
        "max_sessions_per_key": 2,
        "max_body_bytes": 64 * 1024,
        "shutdown_grace_s": 5,
    }
    return ServerSettings(**{**values, **overrides})


_TLS = ssl.create_default_context()  # built once: httpx would load the CA bundle for every client


def http(base_url: str = "", **options: Any) -> httpx.AsyncClient:
    """An httpx client for a test server (loopback, plain HTTP)."""
    return httpx.AsyncClient(base_url=base_url, verify=_TLS, **options)


@dataclass(frozen=True)
class Say:
    """One model step: its text, whether the model ends its turn after it, an optional gate to wait
    on first, and ``fail`` to make the backend raise (as a dead model server would)."""

    text: str = ""
    eos: bool = False
    gate: str | None = None
    fail: bool = False


def cell(code: str, prose: str = "Let me compute.") -> Say:
    return Say(f"{prose}\n```python\n{code}\n```\n")


class ScriptBook(ChatMLWords):
    """A stateless scripted model: step = cells already answered in this turn."""

    name = "scripted"

    def __init__(
        self, scripts: Mapping[str, Sequence[Say]], default: Sequence[Say] = (Say("\\boxed{1}", eos=True),)
    ) -> None:
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.default = list(default)
        self._gates: dict[str, asyncio.Event] = {}
        self._arrived: dict[str, asyncio.Event] = {}

    def _event(self, table: dict[str, asyncio.Event], name: str) -> asyncio.Event:
        return table.setdefault(name, asyncio.Event())

    async def arrived(self, gate: str) -> None:
        """Wait (on the server's loop) until a trajectory waits at ``gate``."""
        await self._event(self._arrived, gate).wait()

    async def open(self, gate: str) -> None:
        self._event(self._gates, gate).set()

    async def complete(self, request: CompletionRequest) -> Completion:
        head, _, turn = request.prompt.rpartition("<|im_start|>assistant\n")
        problem = head.rpartition("<|im_start|>user\n")[2].removesuffix("<|im_end|>\n")
        script = self.scripts.get(problem, self.default)
        step = script[min(turn.count("```output\n"), len(script) - 1)]
        if step.gate is not None:
            self._event(self._arrived, step.gate).set()
            await self._event(self._gates, step.gate).wait()
        if step.fail:
            raise BackendError("scripted failure: the model server went away")
        prompt_tokens = len(request.prompt.split())
        text, stop = cut_at_stop(step.text, request.stop)
        if stop is not None:
            return Completion(
                text=text,
                finish_reason="stop",
                stop=stop,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(text.split()) + 1,
            )
        return Completion(
            text=text,
            finish_reason="eos" if step.eos else "length",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(text.split()),
        )


async def leased_drops_to_zero(live: LiveServer) -> None:
    """Wait (on the server's loop, no polling) until no kernel of its pool is leased."""
    pool: KernelPool = live.services.pool
    await live.call(lambda: pool.wait_until(lambda s: s.leased == 0))
