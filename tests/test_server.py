"""The HTTP server against a real uvicorn on loopback, real sandbox kernels and a scripted model.

Clients are httpx (SSE parsed by httpx-sse) and the official ``openai`` SDK, unchanged.  Every
bad-input case the API promises to refuse has a test here; ``test_server_schema`` fuzzes the
schema and ``test_server_model`` runs the real default model (slow).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from support.server import (
    BOTH_KEY,
    EXEC_KEY,
    OTHER_KEY,
    SOLVE_KEY,
    LiveServer,
    Say,
    ScriptBook,
    bearer,
    cell,
    http,
    leased_drops_to_zero,
    sandbox,
    settings,
)

from benchmarks.procs import pids_of_uids
from runtime.adapter import model_preset
from runtime.prompts import PRESETS
from runtime.server import ServerSettings, create_app
from runtime.server.auth import AuthConfigError, KeyStore, Scope, parse_keys
from runtime.server.errors import Unauthorized
from runtime.server.limits import Admission, AdmissionStats, Ticket
from runtime.server.logs import JsonFormatter, set_request_id
from runtime.settings import RuntimeSettings
from sandbox.pool import KernelPool

MAIN_SANDBOX = sandbox(68000)  # uids 68000-68007
SCRIPTS = {
    "What is 6 times 7?": [cell("x = 6 * 7\nprint(x)"), Say("So the answer is \\boxed{42}.", eos=True)],
    "Hold after one cell": [cell("y = 1\nprint(y)"), Say("never sent", gate="held")],
    "Hold the JSON request": [cell("z = 2\nprint(z)"), Say("never sent", gate="held-json")],
    "Break the model": [cell("print(1)"), Say(fail=True)],
    "Wait a little": [Say("\\boxed{7}", eos=True, gate="slow")],
}


@pytest.fixture(scope="module")
def book() -> ScriptBook:
    return ScriptBook(SCRIPTS)


@pytest.fixture(scope="module")
def live(book: ScriptBook) -> Iterator[LiveServer]:
    server = LiveServer(create_app(settings(), backend=book, pool=KernelPool(MAIN_SANDBOX))).start()
    yield server
    server.stop()
    assert pids_of_uids(range(68000, 68008)) == []


@pytest.fixture
async def client(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http(live.url, headers=bearer(BOTH_KEY), timeout=60) as c:
        yield c


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- /v1/solve --------------------------------------------------------------------------------------
async def test_solve_returns_answer_trace_usage_and_clamped_limits(client: httpx.AsyncClient) -> None:
    body = {
        "problem": "What is 6 times 7?",
        "limits": {"max_rounds": 10**9, "max_tokens": 10**9, "wall_time_s": 1e9},
    }
    r = await client.post("/v1/solve", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    # The served model's own preset: the shipped adapter's (tir-sft) on the default model.
    own = model_preset(RuntimeSettings(), None)
    assert (out["answer"], out["stop_reason"], out["model"], out["preset"]) == ("42", "eos", "mathcoder", own)
    assert [b["kind"] for b in out["trace"]["blocks"]] == ["text", "code", "output", "text"]
    assert out["trace"]["blocks"][2] == {"kind": "output", "output": "42", "status": "ok"}
    assert out["usage"]["cells"] == 1 and out["usage"]["completion_tokens"] > 0
    assert out["limits"] == {"max_rounds": 4, "max_tokens": 512, "cell_timeout_s": 5.0, "wall_time_s": 300.0}
    assert set(out["timings"]) >= {"queue_s", "generate_s", "execute_s", "total_s"}
    assert r.headers["x-request-id"]


async def test_solve_streams_the_runtime_events_and_ends_with_done(client: httpx.AsyncClient) -> None:
    body = {"problem": "What is 6 times 7?", "stream": True}
    async with aconnect_sse(
        client, "POST", "/v1/solve", json=body, headers={"X-Request-ID": "trace-me-1"}
    ) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["x-request-id"] == "trace-me-1"
        events = [(sse.event, json.loads(sse.data)) async for sse in source.aiter_sse()]
    # The block events in order, the model's text streamed between them as raw and typed deltas.
    blocks = [(kind, data) for kind, data in events if kind not in {"text", "prose_delta", "code_delta"}]
    kinds = [kind for kind, _ in blocks]
    assert kinds == ["code", "execution_started", "execution", "final", "done"]
    assert blocks[2][1]["result"]["status"] == "ok" and blocks[2][1]["output"] == "42"
    assert blocks[3][1]["answer"] == "42"
    assert blocks[4][1]["ok"] is True and blocks[4][1]["id"].startswith("solve-")
    code = "".join(data["text"] for kind, data in events if kind == "code_delta")
    assert code == blocks[0][1]["code"]
    assert [kind for kind, _ in events].count("prose_delta") > 2


async def test_streams_send_keepalives_while_the_model_is_silent(live: LiveServer, book: ScriptBook) -> None:
    async with (
        http(live.url, headers=bearer(SOLVE_KEY), timeout=60) as c,
        c.stream("POST", "/v1/solve", json={"problem": "Wait a little", "stream": True}) as r,
    ):
        lines = r.aiter_lines()
        await live.call(lambda: book.arrived("slow"))
        while await anext(lines) != ": keep-alive":
            pass
        await live.call(lambda: book.open("slow"))
        rest = [line async for line in lines]
    assert "event: final" in rest and rest[-3:] == ["event: done", rest[-2], ""]


async def test_a_failing_backend_is_a_502_and_an_error_event(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/solve", json={"problem": "Break the model"})
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["type"] == "trajectory_failed" and "model server went away" in error["message"]
    async with aconnect_sse(
        client, "POST", "/v1/solve", json={"problem": "Break the model", "stream": True}
    ) as s:
        kinds = [(sse.event, json.loads(sse.data)) async for sse in s.aiter_sse()]
    assert [k for k, _ in kinds][-2:] == ["error", "done"] and kinds[-1][1]["ok"] is False


# -- a client that leaves --------------------------------------------------------------------------
async def test_a_client_leaving_mid_stream_cancels_the_trajectory_and_returns_its_kernel(
    live: LiveServer, client: httpx.AsyncClient
) -> None:
    metrics = live.services.metrics
    cancelled_before = metrics.trajectories.labels("cancelled")._value.get()
    async with aconnect_sse(
        client, "POST", "/v1/solve", json={"problem": "Hold after one cell", "stream": True}
    ) as s:
        async for sse in s.aiter_sse():
            if sse.event == "execution":
                break
        assert live.services.pool.stats().leased >= 1  # the trajectory holds its kernel
    await leased_drops_to_zero(live)
    await live.call(lambda: live.services.admission.wait_until(lambda st: st.running == 0))
    assert metrics.trajectories.labels("cancelled")._value.get() == cancelled_before + 1


async def test_a_client_leaving_a_json_request_cancels_it_too(live: LiveServer, book: ScriptBook) -> None:
    async with http(live.url, headers=bearer(SOLVE_KEY), timeout=60) as c:
        request = asyncio.create_task(c.post("/v1/solve", json={"problem": "Hold the JSON request"}))
        await live.call(lambda: book.arrived("held-json"))
        assert live.services.pool.stats().leased >= 1
        request.cancel()  # closes the connection
        with pytest.raises(asyncio.CancelledError):
            await request
    await leased_drops_to_zero(live)
    await live.call(lambda: live.services.admission.wait_until(lambda st: st.running == 0))


# -- /v1/chat/completions with the official SDK ---------------------------------------------------
def test_chat_completion_with_the_openai_sdk(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=SOLVE_KEY, max_retries=0)
    completion = client.chat.completions.create(
        model="mathcoder",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 6 times 7?"},
        ],
    )
    message = completion.choices[0].message
    assert message.role == "assistant" and completion.choices[0].finish_reason == "stop"
    assert message.content == (
        "Let me compute.\n```python\nx = 6 * 7\nprint(x)\n```\n```output\n42\n```\nSo the answer is \\boxed{42}."
    )
    assert completion.model_extra is not None
    extra = completion.model_extra["mathcoder"]
    assert extra["answer"] == "42" and extra["stop_reason"] == "eos"
    assert [b["kind"] for b in extra["trace"]["blocks"]] == ["text", "code", "output", "text"]
    assert (
        completion.usage is not None
        and completion.usage.total_tokens > completion.usage.completion_tokens > 0
    )
    assert [m.id for m in client.models.list()] == ["mathcoder", "scripted"]


async def test_streamed_chat_joins_to_the_same_markdown(live: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=SOLVE_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "What is 6 times 7?"}]}]
    whole = await client.chat.completions.create(model="mathcoder", messages=messages)
    stream = await client.chat.completions.create(
        model="mathcoder", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    await client.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3  # block by block
    last = next(c for c in reversed(chunks) if c.choices)
    assert last.choices[0].finish_reason == "stop"
    assert last.model_extra is not None and last.model_extra["mathcoder"]["answer"] == "42"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_the_sdk_raises_its_typed_errors(live: LiveServer) -> None:
    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0)

    messages: Any = [{"role": "user", "content": "What is 6 times 7?"}]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client(SOLVE_KEY).chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.AuthenticationError):
        client("sk-wrong-0123456789abcdef").chat.completions.create(model="mathcoder", messages=messages)
    with pytest.raises(openai.PermissionDeniedError, match="lacks the 'solve' scope"):
        client(EXEC_KEY).chat.completions.create(model="mathcoder", messages=messages)
    with pytest.raises(openai.UnprocessableEntityError, match="n: Input should be less than or equal to 1"):
        client(SOLVE_KEY).chat.completions.create(model="mathcoder", messages=messages, n=2)
    with pytest.raises(openai.UnprocessableEntityError, match="needs a user message"):
        client(SOLVE_KEY).chat.completions.create(
            model="mathcoder", messages=[{"role": "system", "content": "hi"}]
        )
    with pytest.raises(openai.APIError, match="model server went away"):
        list(
            client(SOLVE_KEY).chat.completions.create(
                model="mathcoder", messages=[{"role": "user", "content": "Break the model"}], stream=True
            )
        )


# -- authentication ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/v1/solve", {}, 401, "invalid_api_key"),
        ("/v1/solve", {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "invalid_api_key"),
        ("/v1/solve", {"Authorization": "Bearer"}, 401, "invalid_api_key"),
        ("/v1/solve", bearer("sk-wrong-0123456789abcdef"), 401, "invalid_api_key"),
        ("/v1/solve", bearer(SOLVE_KEY[:-1]), 401, "invalid_api_key"),
        ("/v1/solve", bearer(EXEC_KEY), 403, "insufficient_scope"),
        ("/v1/chat/completions", bearer(EXEC_KEY), 403, "insufficient_scope"),
        ("/v1/sessions", bearer(SOLVE_KEY), 403, "insufficient_scope"),
        ("/v1/sessions/sess-x/execute", {}, 401, "invalid_api_key"),
    ],
)
async def test_keys_and_scopes_are_enforced_before_the_body_is_read(
    live: LiveServer, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    async with http(live.url) as c:
        r = await c.post(path, content=b"{not even json", headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


async def test_probes_and_metrics_need_no_key(live: LiveServer) -> None:
    async with http(live.url) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ready = (await c.get("/readyz")).json()
        assert ready["ready"] is True and ready["model"] == "scripted" and ready["pool"]["started"] >= 2
        assert (await c.get("/metrics")).status_code == 200


def test_keys_parse_from_text_with_scopes_names_and_comments(tmp_path: Path) -> None:
    entries = parse_keys(
        "# keys\nsk-aaaaaaaaaaaaaaaa solve app  # the app\n\nsk-bbbbbbbbbbbbbbbb solve,execute", "env"
    )
    assert [(p.name, sorted(p.scopes)) for _, p in entries] == [
        ("app", [Scope.SOLVE]),
        (entries[1][1].name, [Scope.EXECUTE, Scope.SOLVE]),
    ]
    assert entries[1][1].name.startswith("key-")
    with pytest.raises(
        AuthConfigError, match=r"env, entry 1: unknown scope in 'admin'; scopes are solve, execute"
    ):
        parse_keys("sk-aaaaaaaaaaaaaaaa admin", "env")
    with pytest.raises(AuthConfigError, match="at least 16 characters"):
        parse_keys("short solve", "env")
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("sk-cccccccccccccccc execute runner\n")
    store = KeyStore.from_settings(ServerSettings(api_keys_file=keys_file))
    assert store.identify("Bearer sk-cccccccccccccccc").name == "runner"
    with pytest.raises(AuthConfigError, match="cannot read"):
        KeyStore.from_settings(ServerSettings(api_keys_file=tmp_path / "missing.txt"))


@pytest.mark.parametrize(
    "presented",
    ["sk-aaaaaaaaaaaaaaaa", "sk-cccccccccccccccc", "sk-aaaaaaaaaaaaaaab", "x", "sk-" + "a" * 4000],
    ids=["the first key", "the last key", "one character off", "short", "long"],
)
def test_a_key_is_compared_with_every_stored_key_in_constant_time(
    presented: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time a check takes says nothing about which key matched, or how much of one: every stored
    key is compared, always by ``hmac.compare_digest``, always on digests of one length."""
    import hmac

    store = KeyStore.from_settings(
        ServerSettings(
            api_keys="sk-aaaaaaaaaaaaaaaa solve a; sk-bbbbbbbbbbbbbbbb solve b; sk-cccccccccccccccc solve c"
        )
    )
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    try:
        name: str | None = store.identify(f"Bearer {presented}").name
    except Unauthorized:
        name = None
    assert name == {"sk-aaaaaaaaaaaaaaaa": "a", "sk-cccccccccccccccc": "c"}.get(presented)
    assert len(compared) == 3 and len({pair for pair in compared}) == 1 and compared[0][0] == compared[0][1]


def test_no_auth_only_on_loopback_and_only_when_asked() -> None:
    with pytest.raises(ValidationError, match=r"no_auth is refused on host '0\.0\.0\.0'"):
        ServerSettings(no_auth=True, host="0.0.0.0")
    with pytest.raises(AuthConfigError, match="no API keys configured"):
        create_app(ServerSettings(), backend=ScriptBook({}), pool=KernelPool(sandbox(68050, pool_size=0)))
    assert KeyStore.from_settings(ServerSettings(no_auth=True, host="::1")).identify(None).name == "anonymous"


async def test_a_no_auth_server_on_loopback_serves_without_keys() -> None:
    app = create_app(
        ServerSettings(no_auth=True),
        backend=ScriptBook({}),
        pool=KernelPool(sandbox(68050, pool_size=0, max_kernels=2)),
    )
    server = LiveServer(app).start()
    try:
        async with http(server.url) as c:
            r = await c.post("/v1/solve", json={"problem": "anything"})
        assert r.status_code == 200 and r.json()["answer"] == "1"
    finally:
        server.stop()


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"problem": "6*7", ', 400, "the request body is not valid JSON"),
        (b"[1, 2]", 422, "body: Input should be a valid dictionary"),
        (b'{"problem": 42}', 422, "body.problem: Input should be a valid string"),
        (b'{"problem": "   "}', 422, "body.problem: Value error, must not be empty or only whitespace"),
        (b"{}", 422, "body.problem: Field required"),
        (
            b'{"problem": "x", "limits": {"max_rounds": "many"}}',
            422,
            "body.limits.max_rounds: Input should be a valid integer",
        ),
        (b'{"problem": "x", "limits": {"max_rounds": -1}}', 422, "greater than or equal to 0"),
        (b'{"problem": "x", "limits": {"wall_time_s": Infinity}}', 422, "body.limits.wall_time_s"),
        (b'{"problem": "x", "sampling": {"temperature": 9}}', 422, "body.sampling.temperature"),
        (
            b'{"problem": "x", "preset": "chatty"}',
            422,
            f"unknown prompt preset 'chatty'; choose one of {sorted(PRESETS)}",
        ),
        (b'{"problem": "x", "colour": "red"}', 422, "body.colour: Extra inputs are not permitted"),
        (b'{"problem": "\\ud800"}', 422, "body.problem: Input should be a valid string"),
        (b'{"problem": "x", "stream": "yes please"}', 422, "body.stream: Input should be a valid boolean"),
        (b'{"problem": "\xff\xfe x"}', 400, "the request body is not valid JSON: it is not UTF-8 text"),
        (
            b'{"problem": "x", "limits": ' + b"[" * 30000 + b"]" * 30000 + b"}",
            400,
            "the request body is not valid JSON: it nests too deeply",
        ),
    ],
)
async def test_bad_solve_bodies_get_clear_errors(
    client: httpx.AsyncClient, body: bytes, status: int, needle: str
) -> None:
    r = await client.post("/v1/solve", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"]
    assert error["request_id"] == r.headers["x-request-id"]


async def test_oversize_bodies_are_413_declared_or_streamed(client: httpx.AsyncClient) -> None:
    big = json.dumps({"problem": "x" * (65 * 1024)}).encode()
    r = await client.post("/v1/solve", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "MATHCODER_SERVER_MAX_BODY_BYTES" in r.json()["error"]["message"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    r = await client.post("/v1/solve", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


async def test_unknown_routes_and_methods_use_the_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = await client.get("/v1/solve")
    assert r.status_code == 405 and r.json()["error"]["message"] == "Method Not Allowed"


async def test_request_ids_are_kept_when_sane_and_replaced_otherwise(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces" and len(r.headers["x-request-id"]) == 32


class RecordWaiter(logging.Handler):
    """A log handler that hands over the first record matching ``predicate``, from any thread."""

    def __init__(self, predicate: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__()
        self.predicate = predicate
        self.record: logging.LogRecord | None = None
        self.found = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.record is None and self.predicate(record):
            self.record = record
            self.found.set()

    def wait(self, timeout_s: float) -> logging.LogRecord:
        if not self.found.wait(timeout_s) or self.record is None:
            raise AssertionError(f"no matching log record within {timeout_s} s")
        return self.record


async def test_keys_are_never_logged(live: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    # Every record any logger writes while a good key, a wrong key and a malformed header arrive.
    done = RecordWaiter(lambda r: getattr(r, "request_id", None) == "keys-last")
    everything: list[logging.LogRecord] = []
    collect = logging.Handler()
    collect.emit = everything.append  # type: ignore[method-assign]
    root, access = logging.getLogger(), logging.getLogger("runtime.server.access")
    root.addHandler(collect)
    access.addHandler(collect)
    access.addHandler(done)
    wrong = "sk-wrong-" + "7" * 24
    try:
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="runtime.server.access"):
            async with http(live.url, timeout=60) as c:
                good = await c.get("/v1/models", headers=bearer(BOTH_KEY))
                bad = await c.get("/v1/models", headers=bearer(wrong))
                odd = await c.get("/v1/models", headers={"Authorization": f"Basic {wrong}"})
                await c.get("/healthz", headers={"X-Request-ID": "keys-last"})
                await asyncio.to_thread(done.wait, 30)  # the access log is written after the response
    finally:
        root.removeHandler(collect)
        access.removeHandler(collect)
        access.removeHandler(done)
    assert (good.status_code, bad.status_code, odd.status_code) == (200, 401, 401)
    text = "\n".join(JsonFormatter().format(r) for r in everything)
    assert len(everything) >= 4 and BOTH_KEY not in text and wrong not in text


async def test_access_logs_are_structured_with_the_request_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    # The server logs a request after sending its response, on its own thread: wait for the record.
    seen = RecordWaiter(lambda r: getattr(r, "request_id", None) == "log-me-7")
    access = logging.getLogger("runtime.server.access")
    access.addHandler(seen)
    try:
        with caplog.at_level(logging.INFO, logger="runtime.server.access"):
            await client.get("/healthz", headers={"X-Request-ID": "log-me-7"})
            record = await asyncio.to_thread(seen.wait, 30)
    finally:
        access.removeHandler(seen)
    line = json.loads(JsonFormatter().format(record))
    assert line["route"] == "/healthz" and line["status"] == 200 and line["key"] is None
    assert line["request_id"] == "log-me-7" and line["level"] == "info" and line["duration_ms"] >= 0
    set_request_id("ctx-9")
    try:
        assert (
            json.loads(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})))["request_id"] == "ctx-9"
        )
    finally:
        set_request_id(None)


# -- metrics ---------------------------------------------------------------------------------------
async def test_metrics_count_requests_executions_tokens_and_pool_state(client: httpx.AsyncClient) -> None:
    await client.post("/v1/solve", json={"problem": "What is 6 times 7?"})
    await client.post("/v1/solve", json={"problem": 1})
    samples = metric_samples((await client.get("/metrics")).text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    assert value("mathcoder_http_requests_total", route="/v1/solve", method="POST", status="200") >= 1
    assert value("mathcoder_http_requests_total", route="/v1/solve", method="POST", status="422") >= 1
    assert (
        value("mathcoder_http_request_duration_seconds_count", route="/v1/solve", method="POST", status="200")
        >= 1
    )
    assert value("mathcoder_executions_total", status="ok", origin="trajectory") >= 1
    assert value("mathcoder_tokens_generated_total") > 0
    assert value("mathcoder_trajectories_total", outcome="eos") >= 1
    assert (
        value("mathcoder_pool_kernels", state="idle") + value("mathcoder_pool_kernels", state="starting") >= 1
    )
    assert ("mathcoder_pool_kernels", frozenset({("state", "leased")})) in samples
    assert value("mathcoder_pool_kernels_started_total") >= 2
    for gauge in (
        "mathcoder_queue_depth",
        "mathcoder_trajectories_in_flight",
        "mathcoder_sessions_open",
        "mathcoder_pool_size",
    ):
        assert (gauge, frozenset()) in samples
    assert ("mathcoder_pool_restarts_total", frozenset()) in samples


# -- admission: the queue and the per-key limit ------------------------------------------------------
@pytest.fixture(scope="module")
def tight() -> Iterator[tuple[LiveServer, ScriptBook]]:
    """One running slot, one queued, one request per key; no kernels (its scripts write no code)."""
    book = ScriptBook({f"Hold {g}": [Say("\\boxed{0}", eos=True, gate=g)] for g in "abc"})
    app = create_app(
        settings(max_running=1, max_queued=1, per_key_concurrency=1, retry_after_s=3),
        backend=book,
        pool=KernelPool(sandbox(68050, pool_size=0, max_kernels=2)),
    )
    server = LiveServer(app).start()
    yield server, book
    server.stop()


async def test_a_full_queue_and_a_busy_key_get_429_with_retry_after(
    tight: tuple[LiveServer, ScriptBook],
) -> None:
    live, book = tight
    admission = live.services.admission
    async with (
        http(live.url, headers=bearer(SOLVE_KEY), timeout=60) as a,
        http(live.url, headers=bearer(EXEC_KEY), timeout=60) as refused_scope,
        http(live.url, headers=bearer(BOTH_KEY), timeout=60) as b,
        http(live.url, headers=bearer(OTHER_KEY), timeout=60) as c,
    ):
        running = asyncio.create_task(a.post("/v1/solve", json={"problem": "Hold a"}))
        await live.call(lambda: book.arrived("a"))
        busy_key = await a.post("/v1/solve", json={"problem": "Hold a"})
        assert busy_key.status_code == 429 and busy_key.headers["retry-after"] == "3"
        assert busy_key.json()["error"]["code"] == "key_concurrency_limit"
        assert (await refused_scope.post("/v1/solve", json={"problem": "Hold a"})).status_code == 403

        async with aconnect_sse(b, "POST", "/v1/solve", json={"problem": "Hold b", "stream": True}) as queued:
            await live.call(lambda: admission.wait_until(lambda st: st.queued == 1))
            full = await c.post("/v1/solve", json={"problem": "Hold c"})
            assert full.status_code == 429 and full.headers["retry-after"] == "3"
            assert full.json()["error"]["code"] == "queue_full"
            lines = queued.response.aiter_lines()
            assert await anext(lines) == ": keep-alive"  # a queued stream is kept alive
        # b left while queued: it leaves the queue without ever running
        await live.call(lambda: admission.wait_until(lambda st: st.queued == 0))
        assert admission.stats().running == 1
        await live.call(lambda: book.open("a"))
        assert (await running).json()["answer"] == "0"
        await live.call(lambda: admission.wait_until(lambda st: st.running == 0))
        assert (await c.post("/v1/solve", json={"problem": "anything else"})).status_code == 200


def release_on_done(ticket: Ticket) -> Callable[[object], None]:
    return lambda _: ticket.release()


async def test_a_slot_granted_to_a_task_cancelled_before_it_ran_passes_on() -> None:
    admission = Admission(max_running=1, max_queued=2, per_key=5, retry_after_s=1)
    first = admission.admit("k")
    second, third = admission.admit("k"), admission.admit("k")
    assert first.granted and admission.stats().queued == 2
    tasks = []
    for ticket in (second, third):  # owned as the server owns them: released by a done-callback
        task = asyncio.create_task(ticket.acquire())
        task.add_done_callback(release_on_done(ticket))
        tasks.append(task)
    first.release()  # the slot goes to the second ticket...
    tasks[0].cancel()  # ...whose task is cancelled before it ever ran
    await asyncio.wait({tasks[0]})
    await tasks[1]
    assert third.granted and admission.stats() == AdmissionStats(running=1, queued=0, admitted=3, refused=0)
    await asyncio.wait({tasks[1]})  # its callback released it
    assert admission.stats().running == 0


# -- graceful shutdown ---------------------------------------------------------------------------
async def test_shutdown_finishes_what_it_can_cancels_the_rest_and_leaves_no_kernel() -> None:
    book = ScriptBook(
        {
            "Finish me": [cell("a = 1\nprint(a)"), Say("\\boxed{1}", eos=True, gate="finish")],
            "Cancel me": [cell("b = 2\nprint(b)"), Say("never", gate="never")],
        }
    )
    uids = range(68040, 68044)
    app = create_app(
        settings(shutdown_grace_s=1),
        backend=book,
        pool=KernelPool(sandbox(68040, pool_size=2, max_kernels=4)),
    )
    server = LiveServer(app, grace_s=2).start()
    events: dict[str, list[str]] = {"Finish me": [], "Cancel me": []}

    async def follow(problem: str, started: asyncio.Event) -> None:
        async with (
            http(server.url, headers=bearer(SOLVE_KEY), timeout=60) as c,
            aconnect_sse(c, "POST", "/v1/solve", json={"problem": problem, "stream": True}) as s,
        ):
            async for sse in s.aiter_sse():
                events[problem].append(sse.event)
                if sse.event == "execution":
                    started.set()

    try:
        ready = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(follow(p, e)) for p, e in zip(events, ready, strict=True)]
        await asyncio.gather(*(e.wait() for e in ready))
        assert len(pids_of_uids(uids)) >= 2  # both trajectories hold a kernel
        server.server.should_exit = True
        await asyncio.to_thread(server.server.shutting_down.wait)
        await server.call(lambda: book.open("finish"))
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(server.stop)
    finally:
        if server.thread.is_alive():
            server.stop()
    assert events["Finish me"][-2:] == ["final", "done"]  # in-flight work finished within the grace
    assert "final" not in events["Cancel me"]  # the rest was cancelled
    assert pids_of_uids(uids) == []
    stats = app.state.services.pool.stats()
    assert (stats.idle, stats.leased, stats.starting) == (0, 0, 0)
    with pytest.raises(httpx.ConnectError):
        async with http() as c:
            await c.get(f"{server.url}/healthz")


def test_every_serve_option_is_a_setting() -> None:
    import inspect

    from runtime.serve_cli import serve

    assert set(inspect.signature(serve).parameters) <= set(ServerSettings.model_fields)
