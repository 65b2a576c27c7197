"""The server with the real default model (SmolLM2-135M on CPU): slow, behind the ``slow`` marker.

An in-process server answers ``/v1/solve`` streams and the ``openai`` SDK; then ``mathcoder serve``
itself runs as a subprocess, serves a stream, is sent SIGTERM mid-trajectory, and must finish
the stream, shut down cleanly, log JSON lines with request ids, and leave no kernel process behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from httpx_sse import aconnect_sse
from support.server import SOLVE_KEY, LiveServer, bearer, http

from benchmarks.procs import pids_of_uids
from runtime.server import ServerSettings, create_app
from runtime.server.routes.openai_api import render_markdown
from runtime.settings import RuntimeSettings
from runtime.trace import Trace
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

pytest.importorskip("torch")
pytest.importorskip("transformers")

from runtime.backends.transformers_backend import TransformersBackend

# Real generation on a shared 2-core CPU: small token budgets, and more time than the default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

UIDS = range(68200, 68208)
RUN_DIR = SandboxSettings().run_dir / "test-server" / "model"
PROBLEM = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?"


@pytest.fixture(scope="module")
def loaded() -> TransformersBackend:
    return TransformersBackend.load(None, RuntimeSettings(), device="cpu")


@pytest.fixture(scope="module")
def live(loaded: TransformersBackend) -> Iterator[LiveServer]:
    backend = TransformersBackend(loaded.model, loaded.tokenizer, RuntimeSettings(), name=loaded.name)
    sandbox = SandboxSettings().model_copy(
        update={"pool_size": 1, "max_kernels": 4, "uid_base": UIDS.start, "run_dir": RUN_DIR / "in-process"}
    )
    settings = ServerSettings(
        api_keys=f"{SOLVE_KEY} solve app",
        max_tokens=32,
        keepalive_s=2.0,
        default_wall_time_s=600,
        max_wall_time_s=600,
    )
    server = LiveServer(create_app(settings, backend=backend, pool=KernelPool(sandbox))).start()
    yield server
    server.stop()
    assert pids_of_uids(UIDS) == []


async def test_a_real_model_trajectory_streams_and_ends_with_done(live: LiveServer) -> None:
    body = {"problem": PROBLEM, "stream": True, "limits": {"max_tokens": 10**6, "max_rounds": 2}}
    async with (
        http(live.url, headers=bearer(SOLVE_KEY), timeout=900) as c,
        aconnect_sse(c, "POST", "/v1/solve", json=body) as source,
    ):
        events = [(sse.event, json.loads(sse.data)) async for sse in source.aiter_sse()]
    kinds = [k for k, _ in events]
    assert kinds[0] == "text" and kinds[-2:] == ["final", "done"], kinds
    final, done = events[-2][1], events[-1][1]
    assert done["ok"] is True and done["limits"]["max_tokens"] == 32  # clamped to the server's ceiling
    usage = final["trace"]["metadata"]["usage"]
    assert 0 < usage["completion_tokens"] <= 32
    assert final["trace"]["metadata"]["model"] == "mathcoder"
    await live.call(lambda: live.services.pool.wait_until(lambda s: s.leased == 0))


def test_the_openai_sdk_talks_to_the_real_model(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=SOLVE_KEY, max_retries=0, timeout=900)
    messages: Any = [{"role": "user", "content": PROBLEM}]
    completion = client.chat.completions.create(model="mathcoder", messages=messages, max_tokens=16)
    content = completion.choices[0].message.content
    assert content and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 16
    assert completion.model_extra is not None
    trace = Trace.model_validate(completion.model_extra["mathcoder"]["trace"])
    assert render_markdown(trace.blocks) == content

    chunks = list(
        client.chat.completions.create(model="mathcoder", messages=messages, max_tokens=16, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.model_extra is not None and last.choices[0].finish_reason in ("stop", "length")
    assert streamed == render_markdown(Trace.model_validate(last.model_extra["mathcoder"]["trace"]).blocks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_mathcoder_serve_drains_on_sigterm_and_leaves_no_kernel(tmp_path: Path) -> None:
    port = free_port()
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{SOLVE_KEY} solve cli-test\n")
    env = {
        **os.environ,
        "MATHCODER_DEVICE": "cpu",
        "MATHCODER_SERVER_MAX_TOKENS": "16",
        "MATHCODER_SERVER_DEFAULT_WALL_TIME_S": "600",
        "MATHCODER_SERVER_MAX_WALL_TIME_S": "600",
        "MATHCODER_SERVER_SHUTDOWN_GRACE_S": "600",
        "MATHCODER_SANDBOX_POOL_SIZE": "1",
        "MATHCODER_SANDBOX_MAX_KERNELS": "4",
        "MATHCODER_SANDBOX_UID_BASE": str(UIDS.start + 4),
        "MATHCODER_SANDBOX_RUN_DIR": str(RUN_DIR / "cli"),
    }
    command = [
        sys.executable,
        "-m",
        "runtime.cli",
        "serve",
        "--port",
        str(port),
        "--api-keys-file",
        str(keys),
    ]
    proc = await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    running = asyncio.Event()

    async def read_logs(stream: asyncio.StreamReader) -> None:  # the serving line is the readiness signal
        while line := (await stream.readline()).decode():
            lines.append(line)
            if "Uvicorn running on" in line:
                running.set()
        running.set()

    reader = asyncio.create_task(read_logs(proc.stderr))
    kinds: list[str] = []
    try:
        await asyncio.wait_for(running.wait(), 300)
        assert proc.returncode is None, "".join(lines)
        headers = {**bearer(SOLVE_KEY), "X-Request-ID": "sigterm-1"}
        async with (
            http(f"http://127.0.0.1:{port}", headers=headers, timeout=900) as c,
            aconnect_sse(c, "POST", "/v1/solve", json={"problem": PROBLEM, "stream": True}) as source,
        ):
            proc.send_signal(signal.SIGTERM)  # the trajectory has just started
            kinds = [sse.event async for sse in source.aiter_sse()]
        # uvicorn re-raises the signal after its graceful shutdown, so the status says SIGTERM.
        assert await asyncio.wait_for(proc.wait(), 600) in (0, -signal.SIGTERM)
        await reader
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
    assert kinds[-2:] == ["final", "done"]  # the in-flight trajectory finished within the grace
    assert pids_of_uids(range(UIDS.start + 4, UIDS.start + 8)) == []
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    access = [r for r in records if r.get("logger") == "runtime.server.access"]
    assert any(
        r["request_id"] == "sigterm-1" and r["route"] == "/v1/solve" and r["key"] == "cli-test"
        for r in access
    )
    assert any(r["message"] == "shut down" for r in records)  # the lifespan's drain ran to its end
