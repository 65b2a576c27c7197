"""Streaming that is real, through every client: the CLI, ``/v1/solve`` SSE and the OpenAI SDK.

A scripted model is held before each word of its prose until the client has shown the word before
it (a gate between the model and the client).  If any layer -- the backend's stream, the loop, the
server's framing, the SSE or chat chunks, the SDK, the CLI's printing -- buffered a step, the client
would never show word k while the model waits to write word k+1: the gate times out, the model
fails, the test fails.  And a client that leaves mid-stream stops the model within 4 tokens or 1 s
and gives its kernel back.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from httpx_sse import connect_sse
from support.server import SOLVE_KEY, LiveServer, bearer, leased_drops_to_zero, sandbox, settings

from benchmarks.engine_server import openai_app
from benchmarks.procs import pids_of_uids
from runtime.backends.base import BackendError
from runtime.backends.scripted import ScriptedBackend, Step, words
from runtime.server import create_app
from sandbox.pool import KernelPool

MATHCODER = str(Path(sys.executable).parent / "mathcoder")
UIDS = range(68400, 68404)
WAIT_S = 30.0  # for one word to reach the client: generous for a loaded 2-core machine

PROBLEM = "Streaming check: Priya bakes 7 boxes of 6 muffins and gives 15 away. How many are left?"
CODE = 'print("She has", 7 * 6 - 15, "muffins left over today")'
OUTPUT = "She has 27 muffins left over today"  # more words than a chat chunk may carry
PROSE = "Priya bakes seven boxes of six muffins and gives fifteen away, so I count what is left."
SCRIPT = [
    Step(f"{PROSE}\n```python\n{CODE}\n```\n"),
    Step("She has \\boxed{27} muffins left.", eos=True),
]
PROSE_WORDS = words(PROSE)


class Gate:
    """The scripted model's ``pace``: before prose word k (k >= 1), wait until the client has shown
    words 0..k-1.  The client's reader calls ``saw`` with whatever it receives."""

    def __init__(self) -> None:
        self.shown = ""
        self.cond = threading.Condition()
        self.held: list[int] = []  # the tokens the model was held before

    def saw(self, text: str) -> None:
        with self.cond:
            self.shown += text
            self.cond.notify_all()

    async def pace(self, k: int) -> None:
        if not 1 <= k < len(PROSE_WORDS):
            return
        need = "".join(PROSE_WORDS[:k]).strip()
        self.held.append(k)
        if not await asyncio.to_thread(self._wait, need):
            raise BackendError(f"gate: the client never showed {need!r} (it got {self.shown!r})")

    def _wait(self, need: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: need in " ".join(self.shown.split()), timeout=WAIT_S)


def scripted(gate: Gate) -> ScriptedBackend:
    return ScriptedBackend({PROBLEM: SCRIPT}, pace=gate.pace)


@pytest.fixture
def solver() -> Iterator[tuple[LiveServer, Gate]]:
    gate = Gate()
    app = create_app(settings(), backend=scripted(gate), pool=KernelPool(sandbox(UIDS.start, pool_size=1)))
    live = LiveServer(app).start()
    yield live, gate
    live.stop()
    assert pids_of_uids(UIDS) == []


def test_the_cli_prints_each_word_before_the_model_writes_the_next() -> None:
    gate = Gate()
    model = LiveServer(openai_app(scripted(gate))).start()
    try:
        env = {
            **os.environ,
            "MATHCODER_SANDBOX_UID_BASE": str(UIDS.start),
            "MATHCODER_SANDBOX_POOL_SIZE": "1",
        }
        command = [MATHCODER, "solve", PROBLEM, "--backend", "openai", "--base-url", f"{model.url}/v1"]
        command += ["--model", "scripted", "--preset", "tir"]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            out = b""
            while chunk := os.read(proc.stdout.fileno(), 4096):  # whatever the CLI has written, at once
                out += chunk
                gate.saw(chunk.decode(errors="replace"))
            stderr = proc.stderr.read().decode()
            assert proc.wait(60) == 0, stderr[-3000:]
    finally:
        model.stop()
    text = out.decode()
    assert gate.held == list(range(1, len(PROSE_WORDS)))
    assert PROSE in text  # prose as written, then the cell as code, its output fenced, the answer
    assert f"```python\n{CODE}\n```\n```output\n{OUTPUT}\n```\n" in text
    assert text.rstrip().endswith("answer: 27  (eos)")


def test_solve_sse_sends_each_word_before_the_model_writes_the_next(solver: tuple[LiveServer, Gate]) -> None:
    live, gate = solver
    body = {"problem": PROBLEM, "stream": True}
    kinds: list[str] = []
    with (
        httpx.Client(base_url=live.url, headers=bearer(SOLVE_KEY), timeout=60) as client,
        connect_sse(client, "POST", "/v1/solve", json=body) as source,
    ):
        for sse in source.iter_sse():
            kinds.append(sse.event)
            if sse.event == "prose_delta":
                gate.saw(json.loads(sse.data)["text"])
            if sse.event == "final":
                final = json.loads(sse.data)
    assert gate.held == list(range(1, len(PROSE_WORDS)))
    assert final["answer"] == "27" and kinds[-1] == "done"
    assert kinds.count("prose_delta") >= len(PROSE_WORDS) and "code_delta" in kinds


def test_the_openai_sdk_streams_each_word_before_the_model_writes_the_next(
    solver: tuple[LiveServer, Gate],
) -> None:
    live, gate = solver
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=SOLVE_KEY, max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="mathcoder",
        messages=[{"role": "user", "content": PROBLEM}],
        stream=True,
        stream_options={"include_usage": True},
    )
    contents: list[str] = []
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            contents.append(chunk.choices[0].delta.content)
            gate.saw(contents[-1])
        if chunk.usage is not None:
            usage = chunk.usage
    assert gate.held == list(range(1, len(PROSE_WORDS)))
    content = "".join(contents)
    assert content.startswith(f"{PROSE}\n```python\n{CODE}\n```\n```output\n{OUTPUT}\n```\n")
    assert content.endswith("She has \\boxed{27} muffins left.")
    assert len(contents) >= len(PROSE_WORDS)  # many chunks, not one per block
    assert max(len(c.split()) for c in contents) <= 4  # the scripted model's tokens are words
    assert usage is not None and usage.completion_tokens > 0  # the scripted model counts no prompt


def test_a_client_leaving_stops_the_model_within_4_tokens_or_1_s_and_frees_its_kernel() -> None:
    long_prose = " ".join(f"word{i}" for i in range(400))
    problem = "Leave me after a cell"
    emitted: list[float] = []

    async def pace(k: int) -> None:
        emitted.append(time.monotonic())
        if len(emitted) > len(words(SCRIPT[0].text)):
            await asyncio.sleep(0.02)  # the second step comes at a model's speed, 50 tokens/s

    backend = ScriptedBackend(
        {problem: [Step("Let me compute.\n```python\nprint(1)\n```\n"), Step(long_prose, eos=True)]},
        pace=pace,
    )
    pool = KernelPool(sandbox(UIDS.start, pool_size=1))
    live = LiveServer(create_app(settings(), backend=backend, pool=pool)).start()
    try:
        with (
            httpx.Client(base_url=live.url, headers=bearer(SOLVE_KEY), timeout=60) as client,
            connect_sse(client, "POST", "/v1/solve", json={"problem": problem, "stream": True}) as source,
        ):
            seen_after_output = 0
            for sse in source.iter_sse():
                if sse.event == "execution":
                    assert live.services.pool.stats().leased == 1  # the trajectory holds its kernel
                if sse.event == "prose_delta" and "word" in sse.data:
                    seen_after_output += 1
                    if seen_after_output == 3:
                        break
            left_at = time.monotonic()
            written_at_leaving = len(emitted)
        asyncio.run(leased_drops_to_zero(live))
        after = emitted[written_at_leaving:]
        assert len(after) <= 4 or after[-1] - left_at <= 1.0, (len(after), after[-1] - left_at)
        assert len(emitted) < len(words(SCRIPT[0].text)) + 400  # nowhere near the end of the step
    finally:
        live.stop()
    assert pids_of_uids(UIDS) == []
