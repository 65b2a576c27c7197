"""A backend that talks to any OpenAI-compatible HTTP server.

vLLM, SGLang, TGI, llama.cpp's ``llama-server``, ``transformers serve`` and hosted APIs all speak the
same two endpoints.  The agent loop renders its own prompts, so the default is the **completions**
API (``POST {base_url}/completions``: prompt in, text out), which continues the prompt exactly.

**Chat mode** (``mode="chat"``, ``POST {base_url}/chat/completions``) is for servers that only offer
chat.  The rendered prompt must then be ChatML — which is what :meth:`OpenAIBackend.render_chat`
produces in chat mode — and is split back into messages; the server applies the model's real
template.  A trailing unterminated ``<|im_start|>assistant\\n...`` is the assistant's partial turn:

* ``continue_final_message=True`` (default) sends it as the last message together with
  ``continue_final_message: true, add_generation_prompt: false``, the vLLM/SGLang extension that
  makes the server continue that message instead of opening a new one.  Servers without the
  extension reject the request (``transformers serve`` answers 422) or ignore the fields.
* ``continue_final_message=False`` sends it as a finished assistant message; the server opens a
  *new* assistant turn after it, so the reply is not a faithful continuation (the model sees its
  partial turn closed).  A warning says so when the backend is built.

Hosted OpenAI models do not support continuing a partial assistant turn at all.

**Which stop string ended the text.**  The OpenAI API reports ``finish_reason: "stop"`` both when a
stop string matched and when the model produced its end-of-turn token, and does not say which stop
string.  This backend decides, in order:

1. The earliest stop string found in the returned text (servers such as ``transformers serve``
   include it; every server does for stop strings beyond the 4 the API accepts, see below): the text
   is cut before it and the result is ``stop`` with that string, whatever the server said.
2. ``stop_reason`` (vLLM) or ``matched_stop`` (SGLang) when the server returns one: a string is the
   matched stop string (``stop``), an integer is a stop token id (``eos``).
3. Otherwise ``"stop"`` is reported as ``eos`` with no stop string.  On servers that strip the stop
   string and do not name it (OpenAI itself, among others) a stop-string match is therefore
   indistinguishable from end-of-turn and reads as ``eos``; with vLLM/SGLang it is exact, and so it is
   where the stop string is kept in the text (``transformers serve``, or vLLM's
   ``include_stop_str_in_output``, which ``extra_body`` can send).

OpenAI servers accept at most 4 stop strings: the first 4 are sent and the rest are applied
client-side (rule 1), so generation runs past them until another stop, EOS or ``max_tokens``, and
``completion_tokens`` (the server's usage) counts the text that was cut off.

**Failures.**  429 and 5xx answers, connection errors and timeouts are retried ``max_retries``
times with exponential backoff and jitter, waiting at least what ``Retry-After`` asks (capped at
``retry_after_max_s``); any other 4xx raises :class:`OpenAIBackendError` at once with the server's
message.  ``read_timeout_s`` bounds the wait for response bytes: for ``complete`` that is how long
one generation may take, for ``stream`` the longest gap between two pieces.

**Streaming.**  ``stream`` asks for the server's SSE stream (``stream: true``, with
``stream_options.include_usage``) and hands on the text as it arrives, holding back what may begin a
stop string; a stop string beyond the server's 4 ends the stream client-side (closing the connection
stops the server's generation).  A failure is retried only before the first piece was handed on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol, Self, TypeVar, runtime_checkable

import httpx
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.backends.base import BackendError, Completion, CompletionRequest, FinishReason
from runtime.backends.stops import StreamedText, find_stop

logger = logging.getLogger(__name__)

MAX_SERVER_STOPS = 4
"""How many stop strings OpenAI-compatible servers accept; the rest are applied client-side."""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


class OpenAISettings(BaseSettings):
    """How to reach an OpenAI-compatible server (environment variables ``MATHCODER_OPENAI_*``)."""

    model_config = SettingsConfigDict(env_prefix="MATHCODER_OPENAI_", frozen=True, extra="forbid")

    base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="The API root including the version, e.g. http://host:8000/v1 (MATHCODER_OPENAI_BASE_URL).",
    )
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("api_key", "MATHCODER_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="Sent as a bearer token (MATHCODER_OPENAI_API_KEY, else OPENAI_API_KEY); none if unset.",
    )
    model: str | None = Field(
        default=None,
        description="The `model` field of requests; left out when unset, which single-model servers accept.",
    )
    mode: Literal["completions", "chat"] = Field(
        default="completions",
        description="completions: /completions with the rendered prompt (exact); chat: /chat/completions.",
    )
    continue_final_message: bool = Field(
        default=True,
        description="Chat mode: ask the server (vLLM/SGLang extension) to continue the partial assistant turn.",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="Seconds to open a connection.")
    read_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds to wait for response bytes (and to send the request): bounds one generation.",
    )
    max_retries: int = Field(
        default=4, ge=0, description="Retries after the first attempt (429, 5xx, network)."
    )
    backoff_base_s: float = Field(
        default=0.5, ge=0, description="First retry waits about this long; each next one twice as long."
    )
    backoff_max_s: float = Field(default=30.0, ge=0, description="Cap on one backoff wait, in seconds.")
    retry_after_max_s: float = Field(
        default=60.0,
        ge=0,
        description="Cap on the wait a server's Retry-After header may impose, in seconds.",
    )
    max_connections: int = Field(
        default=64, ge=1, description="Connections the shared client opens at once; further requests queue."
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Server-specific fields merged into every request body (e.g. vLLM's include_stop_str_in_output).",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class OpenAIBackendError(BackendError):
    """A request failed: ``url``, the last HTTP ``status`` (None for network errors), ``attempts`` made."""

    def __init__(self, message: str, *, url: str, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts


@runtime_checkable
class TokenEncoder(Protocol):
    """Anything with ``encode(text)`` returning token ids (a transformers tokenizer, tiktoken, ...)."""

    def encode(self, text: str, /) -> Sequence[int]: ...


@runtime_checkable
class ChatTemplater(Protocol):
    """A tokenizer that can render a conversation (transformers' ``apply_chat_template``)."""

    def apply_chat_template(
        self, conversation: list[dict[str, str]], /, *, tokenize: bool, add_generation_prompt: bool
    ) -> Any: ...


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str | None = None
    message: _Message | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM
    matched_stop: str | int | None = None  # SGLang


class _Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage | None = None


class _Delta(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str | None = None


class _StreamChoice(_Choice):
    delta: _Delta | None = None


class _Chunk(BaseModel):
    """One event of a streamed answer (chat chunks carry ``delta``, completions chunks ``text``)."""

    model_config = ConfigDict(extra="ignore")
    choices: list[_StreamChoice] = Field(default_factory=list)
    usage: _Usage | None = None


_T = TypeVar("_T")


class _RetryableError(Exception):
    def __init__(self, detail: str, status: int | None, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.retry_after_s = retry_after_s


class OpenAIBackend:
    """Continue prompts with an OpenAI-compatible server; see the module docstring for the details.

    Arguments left as None come from :class:`OpenAISettings` (``settings`` if given, else the
    environment).  ``tokenizer`` is optional: with ``encode`` it makes :meth:`count_tokens` exact
    (otherwise characters/4), with ``apply_chat_template`` it renders chats in completions mode
    (otherwise ChatML).  All concurrent :meth:`complete` calls share one connection pool.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        model: str | None = None,
        api_key: str | None = None,
        mode: Literal["completions", "chat"] | None = None,
        continue_final_message: bool | None = None,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        max_retries: int | None = None,
        backoff_base_s: float | None = None,
        max_connections: int | None = None,
        tokenizer: object | None = None,
        settings: OpenAISettings | None = None,
    ) -> None:
        overrides: dict[str, Any] = {
            key: value
            for key, value in {
                "base_url": base_url,
                "model": model,
                "api_key": api_key,
                "mode": mode,
                "continue_final_message": continue_final_message,
                "connect_timeout_s": connect_timeout_s,
                "read_timeout_s": read_timeout_s,
                "max_retries": max_retries,
                "backoff_base_s": backoff_base_s,
                "max_connections": max_connections,
            }.items()
            if value is not None
        }
        if settings is None:
            settings = OpenAISettings(**overrides)
        elif overrides:
            merged = settings.model_dump()
            merged.update(overrides)
            settings = OpenAISettings(**merged)
        self.settings = settings
        if tokenizer is not None and not isinstance(tokenizer, (TokenEncoder, ChatTemplater)):
            raise TypeError(
                f"tokenizer must have encode() and/or apply_chat_template(), got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        if settings.mode == "chat" and not settings.continue_final_message:
            warnings.warn(
                "OpenAIBackend in chat mode with continue_final_message=False: a partial assistant turn is "
                "sent as a finished message and the server starts a new turn, so replies are not exact "
                "continuations. Use mode='completions' where the server offers /completions.",
                UserWarning,
                stacklevel=2,
            )
        headers = {"Accept": "application/json"}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            headers=headers,
            # pool=None: a request waits for a free connection as long as it takes; each holder of a
            # connection is itself bounded by the read timeout.
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s, pool=None),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
        )
        self._rng = random.Random()

    @property
    def url(self) -> str:
        """The endpoint requests go to."""
        path = "/chat/completions" if self.settings.mode == "chat" else "/completions"
        return self.settings.base_url + path

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # ----- the Backend protocol -----

    async def complete(self, request: CompletionRequest) -> Completion:
        """Continue ``request.prompt``.  Token counts are the server's usage, or :meth:`count_tokens`
        estimates where a server reports none.  Raises :class:`OpenAIBackendError`."""
        response = await self._post(self._request_body(request))
        choice = response.choices[0]
        text = (choice.message.content if choice.message else None) or choice.text or ""
        return self._completion(request, text, choice, response.usage)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        """``complete`` over the server's SSE stream: text pieces as they arrive, then the ``Completion``."""
        body = {**self._request_body(request), "stream": True, "stream_options": {"include_usage": True}}
        shown = StreamedText(request.stop)
        raw = ""
        last = _Choice()
        usage: _Usage | None = None
        response = await self._with_retries(lambda attempt: self._open_stream(body, attempt))
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = _Chunk.model_validate_json(data)
                except ValidationError:
                    raise OpenAIBackendError(
                        f"{self.url} streamed an unexpected event: {data[:500]!r}",
                        url=self.url,
                        status=response.status_code,
                        attempts=1,
                    ) from None
                usage = chunk.usage or usage
                if not chunk.choices:
                    continue  # the usage-only last chunk
                choice = chunk.choices[0]
                text = (choice.delta.content if choice.delta else None) or choice.text or ""
                raw += text
                if choice.finish_reason is not None:
                    last = choice
                if find_stop(raw, request.stop) is not None:
                    break  # a stop string past the server's 4: nothing after it is wanted
                piece = shown.piece(text)
                if piece:
                    yield piece
        except httpx.TransportError as exc:
            raise OpenAIBackendError(
                f"{self.url} broke off its stream: {type(exc).__name__}: {exc}",
                url=self.url,
                status=response.status_code,
                attempts=1,
            ) from None
        finally:
            await response.aclose()
        completion = self._completion(request, raw, last, usage)
        rest = shown.rest(completion.text)
        if rest:
            yield rest
        yield completion

    def _completion(
        self, request: CompletionRequest, text: str, choice: _Choice, usage: _Usage | None
    ) -> Completion:
        """The server's text and finish as a ``Completion``: its usage, or estimates where it sent none."""
        text, finish_reason, stop = _classify_finish(text, choice, request.stop)
        if usage is not None:
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        else:
            prompt_tokens, completion_tokens = self.count_tokens(request.prompt), self.count_tokens(text)
        return Completion(
            text=text,
            finish_reason=finish_reason,
            stop=stop,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text``: ``len(tokenizer.encode(text))`` with a tokenizer (including any special
        tokens its ``encode`` adds), else an estimate of one token per 4 characters, rounded up."""
        if isinstance(self.tokenizer, TokenEncoder):
            return len(self.tokenizer.encode(text))
        return (len(text) + 3) // 4

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """``messages`` rendered up to where the assistant writes.

        In completions mode with a tokenizer that has ``apply_chat_template``, that template (with the
        generation prompt).  Otherwise — no such tokenizer, or chat mode, where the prompt is only a
        wire format the server re-templates — ChatML:
        ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then ``<|im_start|>assistant\\n``.
        ChatML is right for Qwen and SmolLM2 models and a guess for others: give the tokenizer.
        """
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise ValueError(f"message {i} needs string 'role' and 'content' keys, got {sorted(message)}")
        if self.settings.mode == "completions" and isinstance(self.tokenizer, ChatTemplater):
            rendered = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            if not isinstance(rendered, str):
                raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}")
            return rendered
        turns = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return f"{turns}{IM_START}assistant\n"

    # ----- requests -----

    def _request_body(self, request: CompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.settings.model is not None:
            body["model"] = self.settings.model
        if self.settings.mode == "chat":
            messages, partial = parse_chatml(request.prompt)
            body["messages"] = messages
            if partial and self.settings.continue_final_message:
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
        else:
            body["prompt"] = request.prompt
        body["max_tokens"] = request.max_tokens
        body["temperature"] = request.sampling.temperature
        body["top_p"] = request.sampling.top_p
        if request.sampling.seed is not None:
            body["seed"] = request.sampling.seed
        if request.stop:
            body["stop"] = list(request.stop[:MAX_SERVER_STOPS])
        body.update(self.settings.extra_body)
        return body

    async def _post(self, body: Mapping[str, Any]) -> _Response:
        """POST ``body``, retrying what may succeed later; the parsed answer."""
        return await self._with_retries(lambda attempt: self._post_once(body, attempt))

    async def _with_retries(self, call: Callable[[int], Awaitable[_T]]) -> _T:
        """``call(attempt)``, again after a back-off while it fails in a way that may succeed later."""
        attempts = self.settings.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await call(attempt)
            except _RetryableError as failure:
                if attempt == attempts:
                    raise OpenAIBackendError(
                        f"POST {self.url} failed after {attempts} attempts; last: {failure.detail}",
                        url=self.url,
                        status=failure.status,
                        attempts=attempts,
                    ) from None
                delay = self._backoff_s(attempt, failure.retry_after_s)
                logger.warning(
                    "POST %s attempt %d/%d: %s; retrying in %.2f s",
                    self.url,
                    attempt,
                    attempts,
                    failure.detail,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post_once(self, body: Mapping[str, Any], attempt: int) -> _Response:
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TransportError as exc:  # connection refused/reset, timeouts, protocol errors
            raise _RetryableError(f"{type(exc).__name__}: {exc}".rstrip(": "), None) from None
        self._check_status(response, attempt)
        status = response.status_code
        try:
            return _Response.model_validate_json(response.content)
        except ValidationError as exc:
            first = exc.errors()[0]
            json_invalid = first["type"] == "json_invalid"
            problem = "a body that is not JSON" if json_invalid else f"an unexpected body ({first['msg']})"
            raise OpenAIBackendError(
                f"{self.url} answered HTTP {status} with {problem}: {response.text[:500]!r}",
                url=self.url,
                status=status,
                attempts=attempt,
            ) from None

    async def _open_stream(self, body: Mapping[str, Any], attempt: int) -> httpx.Response:
        """The server's answer to a streaming request, its status checked and its body not yet read."""
        request = self._client.build_request("POST", self.url, json=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _RetryableError(f"{type(exc).__name__}: {exc}".rstrip(": "), None) from None
        if response.status_code >= 400:
            try:
                await response.aread()
            except httpx.TransportError as exc:
                raise _RetryableError(f"{type(exc).__name__}: {exc}".rstrip(": "), None) from None
            finally:
                await response.aclose()
            self._check_status(response, attempt)
        return response

    def _check_status(self, response: httpx.Response, attempt: int) -> None:
        """Raise for an error status: retryable (429, 5xx) or not (other 4xx)."""
        status = response.status_code
        if status == 429 or status >= 500:
            raise _RetryableError(
                f"HTTP {status}: {_error_message(response)}", status, _retry_after_s(response.headers)
            )
        if status >= 400:
            raise OpenAIBackendError(
                f"POST {self.url} was refused with HTTP {status}: {_error_message(response)}",
                url=self.url,
                status=status,
                attempts=attempt,
            )

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Wait before retry number ``attempt``: exponential with "equal jitter" (between half and all
        of ``backoff_base_s * 2**(attempt-1)``, capped), but at least the server's capped Retry-After."""
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2.0 ** (attempt - 1))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.settings.retry_after_max_s))
        return delay


def _classify_finish(
    text: str, choice: _Choice, stops: Sequence[str]
) -> tuple[str, FinishReason, str | None]:
    found = find_stop(text, stops)
    if found is not None:
        start, stop = found
        return text[:start], "stop", stop
    if choice.finish_reason == "length":
        return text, "length", None
    if choice.finish_reason != "stop":
        logger.warning("finish_reason %r read as the end of the model's turn", choice.finish_reason)
        return text, "eos", None
    matched = choice.stop_reason if choice.stop_reason is not None else choice.matched_stop
    if isinstance(matched, str) and matched in stops:
        return text, "stop", matched
    return text, "eos", None


def parse_chatml(prompt: str) -> tuple[list[dict[str, str]], bool]:
    """Split a ChatML prompt into messages; the flag says whether the last is an unterminated
    (partial) assistant turn.  An empty partial turn is dropped (the server opens one itself)."""
    stripped = prompt.lstrip()
    if not stripped.startswith(IM_START):
        raise ValueError(
            "chat mode needs a ChatML prompt (as OpenAIBackend.render_chat renders it), starting with "
            f"{IM_START!r}; got {prompt[:80]!r}. Use mode='completions' for other prompt formats."
        )
    segments = stripped.split(IM_START)[1:]
    messages: list[dict[str, str]] = []
    for i, segment in enumerate(segments):
        role, newline, rest = segment.partition("\n")
        if not newline or not role.strip():
            raise ValueError(f"ChatML turn {i} has no role line: {segment[:80]!r}")
        content, end, tail = rest.partition(IM_END)
        last = i == len(segments) - 1
        if end:
            if tail.strip():
                raise ValueError(f"ChatML turn {i} has text after {IM_END!r}: {tail[:80]!r}")
            messages.append({"role": role.strip(), "content": content})
        elif not last:
            raise ValueError(f"ChatML turn {i} ({role.strip()}) is not closed with {IM_END!r}")
        elif role.strip() != "assistant":
            raise ValueError(f"only an assistant turn can be left open for the model; turn {i} is {role!r}")
        elif content:
            messages.append({"role": "assistant", "content": content})
            return messages, True
    return messages, False


def _error_message(response: httpx.Response) -> str:
    """The server's own error text: OpenAI's ``error.message``, FastAPI's ``detail``, or the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "detail", "message"):
            if data.get(key):
                return str(data[key])
    return str(data)[:500]


def _retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds a ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms`` header asks to wait."""
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
