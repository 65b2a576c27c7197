"""The OpenAI-compatible backend against real servers on loopback.

Retries, backoff and error mapping run against a tiny scripted HTTP server written here (fast);
generation runs against ``transformers serve`` with the default model (slow).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from runtime.backends.base import BackendError, CompletionRequest, SamplingParams
from runtime.backends.openai_backend import (
    OpenAIBackend,
    OpenAIBackendError,
    parse_chatml,
)
from runtime.backends.openai_backend import (
    _retry_after_s as retry_after_s,
)
from runtime.settings import RuntimeSettings

# ---------------------------------------------------------------------------------------------
# A scripted HTTP/1.1 server: answers each request with the next reply of its script (the last
# one repeats), records what it received and when.


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # read the request, never answer


@dataclass
class Received:
    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]
    body: Any


def completion_json(text: str = "x = 6 * 7", finish_reason: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "canned",
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, **choice}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


class ScriptedServer:
    def __init__(self, *script: Reply) -> None:
        self.script = list(script)
        self.received: list[Received] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _method, path, _version = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(time.monotonic(), path, headers, json.loads(raw) if raw else None))
            reply = self.script[min(len(self.received), len(self.script)) - 1]
            if reply.hang:
                await asyncio.Event().wait()
            payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            lines = [f"HTTP/1.1 {reply.status} Scripted", "Content-Type: application/json"]
            lines += [f"Content-Length: {len(payload)}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in reply.headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self._handlers.discard(task)


def fast_backend(base_url: str, **kwargs: Any) -> OpenAIBackend:
    options: dict[str, Any] = {"max_retries": 3, "backoff_base_s": 0.01, "read_timeout_s": 5.0}
    options.update(kwargs)
    return OpenAIBackend(base_url, api_key="sk-scripted", **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


REQUEST = CompletionRequest(prompt="Compute 6*7.\n```python\n", stop=("```output",), max_tokens=32)

# ---------------------------------------------------------------------------------------------
# Retries, backoff, error mapping.


async def test_retries_429_then_503_honouring_retry_after() -> None:
    script = (
        Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}),
        Reply(503, {"detail": "warming up"}),
        Reply(200, completion_json(stop_reason="```output")),
    )
    async with ScriptedServer(*script) as server, fast_backend(server.base_url) as backend:
        started = time.monotonic()
        result = await backend.complete(REQUEST)
        elapsed = time.monotonic() - started
    assert len(server.received) == 3
    first, second, third = (r.at for r in server.received)
    assert second - first >= 1.0  # Retry-After: 1 was honoured...
    assert third - second < 0.5  # ...while the 503 retry only backed off (0.01 s base)
    assert elapsed < 3.0
    assert result.text == "x = 6 * 7"
    assert (result.finish_reason, result.stop) == ("stop", "```output")
    assert (result.prompt_tokens, result.completion_tokens) == (11, 5)
    assert all(r.path == "/v1/completions" for r in server.received)


async def test_retry_after_is_capped() -> None:
    script = (Reply(429, {}, {"Retry-After": "3600"}), Reply(200, completion_json()))
    async with ScriptedServer(*script) as server, fast_backend(server.base_url) as backend:
        backend.settings = backend.settings.model_copy(update={"retry_after_max_s": 0.2})
        started = time.monotonic()
        await backend.complete(REQUEST)
    assert 0.2 <= time.monotonic() - started < 2.0


async def test_client_error_raises_at_once_with_the_servers_message() -> None:
    body = {"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid"}}
    async with ScriptedServer(Reply(400, body)) as server, fast_backend(server.base_url) as backend:
        with pytest.raises(OpenAIBackendError, match="HTTP 400: This model's maximum context length") as err:
            await backend.complete(REQUEST)
    assert len(server.received) == 1
    assert (err.value.status, err.value.attempts) == (400, 1)
    assert isinstance(err.value, BackendError)


async def test_5xx_until_the_end_names_url_status_and_attempts() -> None:
    async with ScriptedServer(Reply(502, b"bad gateway")) as server, fast_backend(server.base_url) as backend:
        with pytest.raises(OpenAIBackendError) as err:
            await backend.complete(REQUEST)
    assert len(server.received) == 4  # 1 + max_retries
    message = str(err.value)
    assert f"{server.base_url}/completions" in message
    assert "4 attempts" in message and "HTTP 502: bad gateway" in message
    assert (err.value.status, err.value.attempts) == (502, 4)


async def test_server_down_raises_after_max_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    async with fast_backend(url, max_retries=2) as backend:
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"failed after 3 attempts; last: ConnectError") as err:
            await backend.complete(REQUEST)
    assert isinstance(err.value, OpenAIBackendError)
    assert (err.value.attempts, err.value.status, err.value.url) == (3, None, f"{url}/completions")
    assert time.monotonic() - started < 2.0


async def test_read_timeout_retries_then_raises() -> None:
    async with (
        ScriptedServer(Reply(hang=True)) as server,
        fast_backend(server.base_url, read_timeout_s=0.5, max_retries=1) as backend,
    ):
        started = time.monotonic()
        with pytest.raises(OpenAIBackendError, match=r"after 2 attempts; last: ReadTimeout") as err:
            await backend.complete(REQUEST)
        elapsed = time.monotonic() - started
    assert len(server.received) == 2  # the timed-out request was sent again
    assert err.value.attempts == 2
    assert 1.0 <= elapsed < 3.0


async def test_non_json_answer_is_an_error_not_a_retry() -> None:
    async with (
        ScriptedServer(Reply(200, b"<html>proxy</html>")) as server,
        fast_backend(server.base_url) as b,
    ):
        with pytest.raises(OpenAIBackendError, match="not JSON"):
            await b.complete(REQUEST)
    assert len(server.received) == 1
    async with ScriptedServer(Reply(200, {"choices": []})) as server, fast_backend(server.base_url) as b:
        with pytest.raises(OpenAIBackendError, match="unexpected body"):
            await b.complete(REQUEST)


# ---------------------------------------------------------------------------------------------
# What is sent and how the answer is read.


async def test_request_body_and_auth_header() -> None:
    request = CompletionRequest(
        prompt="p",
        stop=("s1", "s2", "s3", "s4", "s5"),
        max_tokens=7,
        sampling=SamplingParams(temperature=0.7, top_p=0.9, seed=3),
    )
    async with (
        ScriptedServer(Reply(200, completion_json())) as server,
        fast_backend(server.base_url, model="smol") as backend,
    ):
        await backend.complete(request)
    sent = server.received[0]
    assert sent.headers["authorization"] == "Bearer sk-scripted"
    assert sent.body == {
        "model": "smol",
        "prompt": "p",
        "max_tokens": 7,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["s1", "s2", "s3", "s4"],  # servers take 4; s5 is applied client-side
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        # A stop string beyond the first 4 shows up in the text: cut there, whatever the server said.
        ({"text": "a = 1\nSTOP5 and more", "finish_reason": "length"}, ("a = 1\n", "stop", "STOP5")),
        # transformers serve keeps the matched stop string in the text.
        ({"text": "print(42)\n```output", "finish_reason": "stop"}, ("print(42)\n", "stop", "```output")),
        # vLLM names the stop string (text excludes it) or gives a token id / null for EOS.
        ({"text": "t", "finish_reason": "stop", "stop_reason": "STOP2"}, ("t", "stop", "STOP2")),
        ({"text": "t", "finish_reason": "stop", "stop_reason": 2}, ("t", "eos", None)),
        ({"text": "t", "finish_reason": "stop", "stop_reason": None}, ("t", "eos", None)),
        # SGLang calls it matched_stop.
        ({"text": "t", "finish_reason": "stop", "matched_stop": "STOP1"}, ("t", "stop", "STOP1")),
        # No way to tell: reported as the end of the turn.
        ({"text": "t", "finish_reason": "stop"}, ("t", "eos", None)),
        ({"text": "t", "finish_reason": "length"}, ("t", "length", None)),
    ],
)
async def test_finish_reason_and_stop_string(
    choice: dict[str, Any], expected: tuple[str, str, str | None]
) -> None:
    body = completion_json(**choice)
    request = CompletionRequest(prompt="p", stop=("STOP1", "STOP2", "```output", "STOP4", "STOP5"))
    async with ScriptedServer(Reply(200, body)) as server, fast_backend(server.base_url) as backend:
        result = await backend.complete(request)
    assert (result.text, result.finish_reason, result.stop) == expected


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    """A streamed answer as the server would send it."""
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def piece(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish, **extra}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}}


async def collect(backend: OpenAIBackend, request: CompletionRequest) -> tuple[list[str], Any]:
    pieces, final = [], None
    async for item in backend.stream(request):
        if isinstance(item, str):
            pieces.append(item)
        else:
            final = item
    return pieces, final


async def test_stream_hands_on_pieces_holds_back_a_stop_and_takes_the_usage() -> None:
    body = sse(
        piece("x = 6"), piece(" * 7\n`"), piece("``"), piece("", "stop", stop_reason="```output"), USAGE
    )
    request = CompletionRequest(prompt="p", stop=("```output",))
    async with ScriptedServer(Reply(200, body)) as server, fast_backend(server.base_url) as backend:
        pieces, final = await collect(backend, request)
    assert server.received[0].body["stream"] is True
    assert server.received[0].body["stream_options"] == {"include_usage": True}
    # The backticks might have begun ```output: held back until the end showed they were text.
    assert pieces == ["x = 6", " * 7\n", "```"]
    assert (final.text, final.finish_reason, final.stop) == ("x = 6 * 7\n```", "stop", "```output")
    assert (final.prompt_tokens, final.completion_tokens) == (9, 7)


async def test_stream_ends_at_a_fifth_stop_string_client_side() -> None:
    body = sse(piece("a = 1\nST"), piece("OP5 and more"), piece(" and more", "length"))
    request = CompletionRequest(prompt="p", stop=("STOP1", "STOP2", "STOP3", "STOP4", "STOP5"))
    async with ScriptedServer(Reply(200, body)) as server, fast_backend(server.base_url) as backend:
        pieces, final = await collect(backend, request)
    assert server.received[0].body["stop"] == ["STOP1", "STOP2", "STOP3", "STOP4"]
    assert "".join(pieces) == final.text == "a = 1\n" and not any("ST" in p for p in pieces)
    assert (final.finish_reason, final.stop) == ("stop", "STOP5")
    assert final.completion_tokens == 2  # no usage came: the estimate of the text kept


async def test_stream_retries_before_the_first_piece_and_fails_cleanly_after_it() -> None:
    body = sse(piece("forty"), piece(" two", "length"), USAGE)
    request = CompletionRequest(prompt="p", max_tokens=2)
    warming = Reply(503, {"error": "warming up"})
    async with ScriptedServer(warming, Reply(200, body)) as server, fast_backend(server.base_url) as backend:
        pieces, final = await collect(backend, request)
    assert len(server.received) == 2 and pieces == ["forty", " two"] and final.finish_reason == "length"

    broken = sse(piece("forty"), done=False) + b"data: {not json"
    async with ScriptedServer(Reply(200, broken)) as server, fast_backend(server.base_url) as backend:
        with pytest.raises(OpenAIBackendError, match="streamed an unexpected event"):
            await collect(backend, request)
        assert len(server.received) == 1  # text was handed on: never retried


async def test_chat_mode_sends_messages_and_the_partial_turn() -> None:
    reply = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "42.\n"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3},
    }
    async with (
        ScriptedServer(Reply(200, reply)) as server,
        fast_backend(server.base_url, mode="chat") as backend,
    ):
        prompt = backend.render_chat(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "6*7?"}]
        )
        result = await backend.complete(CompletionRequest(prompt=prompt + "The answer is "))
        await backend.complete(CompletionRequest(prompt=prompt))  # no partial turn: nothing to continue
    assert result.text == "42.\n" and result.finish_reason == "eos"
    first, second = (r.body for r in server.received)
    assert server.received[0].path == "/v1/chat/completions"
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "6*7?"},
        {"role": "assistant", "content": "The answer is "},
    ]
    assert first["continue_final_message"] is True and first["add_generation_prompt"] is False
    assert len(second["messages"]) == 2 and "continue_final_message" not in second


def test_chat_mode_without_continuation_warns() -> None:
    with pytest.warns(UserWarning, match="not exact continuations"):
        OpenAIBackend("http://127.0.0.1:1/v1", mode="chat", continue_final_message=False)


def test_parse_chatml_rejects_what_it_cannot_send() -> None:
    with pytest.raises(ValueError, match="needs a ChatML prompt"):
        parse_chatml("User: hi\nAssistant:")
    with pytest.raises(ValueError, match="only an assistant turn"):
        parse_chatml("<|im_start|>user\nhi")
    with pytest.raises(ValueError, match="not closed"):
        parse_chatml("<|im_start|>user\nhi<|im_start|>assistant\n")


def test_render_chat_defaults_to_chatml_and_count_tokens_estimates() -> None:
    backend = OpenAIBackend("http://127.0.0.1:1/v1")
    rendered = backend.render_chat([{"role": "user", "content": "hi"}])
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert parse_chatml(rendered) == ([{"role": "user", "content": "hi"}], False)
    assert backend.count_tokens("") == 0
    assert backend.count_tokens("abcdefghi") == 3
    with pytest.raises(ValueError, match="'role' and 'content'"):
        backend.render_chat([{"role": "user"}])


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MATHCODER_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-generic")
    assert _auth(OpenAIBackend()) == "Bearer sk-generic"
    monkeypatch.setenv("MATHCODER_OPENAI_API_KEY", "sk-ours")
    assert _auth(OpenAIBackend()) == "Bearer sk-ours"
    assert _auth(OpenAIBackend(api_key="sk-arg")) == "Bearer sk-arg"
    assert "sk-ours" not in repr(OpenAIBackend().settings)


def _auth(backend: OpenAIBackend) -> str | None:
    value: str | None = backend._client.headers.get("authorization")
    return value


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="http:// or https://"):
        OpenAIBackend("localhost:8000/v1")
    with pytest.raises(ValidationError, match="read_timeout_s"):
        OpenAIBackend("http://h/v1", read_timeout_s=0)
    with pytest.raises(TypeError, match="encode"):
        OpenAIBackend("http://h/v1", tokenizer=object())


def test_retry_after_header_forms() -> None:
    assert retry_after_s(httpx.Headers({"Retry-After": "2.5"})) == 2.5
    assert retry_after_s(httpx.Headers({"retry-after-ms": "150", "Retry-After": "9"})) == 0.15
    assert retry_after_s(httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # past
    assert retry_after_s(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after_s(httpx.Headers()) is None


# ---------------------------------------------------------------------------------------------
# A real OpenAI-compatible server: `transformers serve` with the default model, on loopback.

SERVER_START_S = 240.0


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The default model as a transformers directory (config, safetensors, tokenizer)."""
    from runtime.model_store import ensure_hf_model  # here, so the fast tests need none of it

    return ensure_hf_model(RuntimeSettings())


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve` on a free loopback port; yields its API root, killed (whole group) after."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("transformers-serve") / "server.log"
    cli = Path(sys.executable).parent / "transformers"
    cmd = [str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/health", log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_healthy(proc: subprocess.Popen[bytes], health_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    for _ in range(int(SERVER_START_S * 2)):  # bounded in count as well as in time
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(health_url, timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    pytest.fail(f"transformers serve not healthy after {SERVER_START_S} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
async def backend(served: str) -> AsyncIterator[OpenAIBackend]:
    async with OpenAIBackend(served, read_timeout_s=240.0, max_retries=1) as backend:
        yield backend


CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.slow
async def test_served_greedy_completion(backend: OpenAIBackend) -> None:
    request = CompletionRequest(prompt=backend.render_chat(CHAT), max_tokens=24)
    first = await backend.complete(request)
    assert first.text.strip()
    assert first.finish_reason in ("eos", "length")
    assert first.prompt_tokens > 0 and 0 < first.completion_tokens <= 24
    assert (await backend.complete(request)).text == first.text  # greedy is deterministic


@pytest.mark.slow
async def test_served_stop_string_ends_the_text_before_it(backend: OpenAIBackend) -> None:
    prompt = "The capital of France is"
    full = (await backend.complete(CompletionRequest(prompt=prompt, max_tokens=12))).text
    cut = next(i for i in range(len(full) // 2, len(full)) if full[i].isalpha())
    stop = full[cut : cut + 2]
    cut = full.index(stop)
    # The server is given the stop string...
    result = await backend.complete(CompletionRequest(prompt=prompt, max_tokens=12, stop=(stop,)))
    assert (result.text, result.finish_reason, result.stop) == (full[:cut], "stop", stop)
    # ...or, as the 5th stop string, only the client applies it.
    stops = ("@@never1", "@@never2", "@@never3", "@@never4", stop)
    result = await backend.complete(CompletionRequest(prompt=prompt, max_tokens=12, stop=stops))
    assert (result.text, result.finish_reason, result.stop) == (full[:cut], "stop", stop)


@pytest.mark.slow
async def test_served_small_max_tokens_gives_length(backend: OpenAIBackend) -> None:
    result = await backend.complete(CompletionRequest(prompt="Once upon a time", max_tokens=3))
    assert result.finish_reason == "length"
    assert result.completion_tokens == 3 and result.prompt_tokens > 0


@pytest.mark.slow
async def test_served_concurrent_requests(backend: OpenAIBackend) -> None:
    prompts = [backend.render_chat([{"role": "user", "content": f"What is {i} + {i}?"}]) for i in range(8)]
    results = await asyncio.gather(
        *(backend.complete(CompletionRequest(prompt=p, max_tokens=4)) for p in prompts)
    )
    assert len(results) == 8
    for result in results:
        assert result.text and result.finish_reason in ("stop", "eos", "length")
        assert result.prompt_tokens > 0 and result.completion_tokens > 0


@pytest.mark.slow
async def test_served_chat_mode(served: str) -> None:
    with pytest.warns(UserWarning, match="not exact continuations"):
        chat = OpenAIBackend(served, mode="chat", continue_final_message=False, read_timeout_s=240.0)
    async with chat:
        result = await chat.complete(CompletionRequest(prompt=chat.render_chat(CHAT), max_tokens=8))
    assert result.text and result.prompt_tokens > 0 and result.completion_tokens > 0


@pytest.mark.slow
def test_tokenizer_renders_and_counts(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    backend = OpenAIBackend("http://127.0.0.1:1/v1", tokenizer=tokenizer)
    rendered = backend.render_chat(CHAT)
    assert rendered == tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert backend.count_tokens("Hello world") == len(tokenizer.encode("Hello world"))
