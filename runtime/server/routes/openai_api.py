"""``POST /v1/chat/completions`` and ``GET /v1/models``: the solver behind OpenAI's chat API.

The "model" is the whole tool-integrated solver: the last user message is the problem, and the
assistant message is the solution — prose, each code cell as a ```` ```python ```` block and its
output as an ```` ```output ```` block, in Markdown.  The structured trace (answer, stop reason,
every block with its execution status) rides in an extra top-level field, ``mathcoder``, which the
official SDK keeps (``completion.model_extra["mathcoder"]``).  Streaming sends the same Markdown as
the model writes it, in chunks of at most 4 tokens, so the pieces join to exactly the non-streamed
content; the last chunk carries ``finish_reason`` and ``mathcoder``, then the usage where
``stream_options.include_usage`` asks for it, then ``data: [DONE]``.

What is not honoured, on purpose: system and earlier messages (the prompt preset has its own
system prompt and worked examples, which a small model needs to write code at all), ``n`` > 1,
``stop``, tools and logprobs.  Other unknown fields are ignored, as OpenAI-compatible servers do;
``preset`` and ``limits`` are extensions (``extra_body`` in the SDK).  ``max_tokens`` bounds the
tokens of the whole trajectory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from runtime.backends.scripted import words
from runtime.events import CodeCell, CodeDelta, ErrorEvent, Event, ExecutionFinished, FinalAnswer, ProseDelta
from runtime.formats import MarkdownFormat
from runtime.formats.markdown import CLOSE as CODE_CLOSE
from runtime.server.auth import Principal, Scope
from runtime.server.deps import needs, services
from runtime.server.errors import Unprocessable, error_body
from runtime.server.routes.solve import final_of, json_response, streamed
from runtime.server.schemas import (
    SEED_MAX,
    PresetName,
    RequestLimits,
    Sampling,
    Text,
    documented,
    trajectory_responses,
)
from runtime.server.services.solver import CLIENT_CLOSED, Job
from runtime.server.sse import frame
from runtime.trace import Block, CodeBlock, OutputBlock, Trace

logger = logging.getLogger(__name__)

_MARKDOWN = MarkdownFormat()
_LENGTH_STOPS = frozenset({"max_tokens", "max_rounds", "wall_time"})
CHUNK_TOKENS = 4
"""The most tokens a streamed chat chunk carries (OpenAI's own streams send one to a few)."""


# -- request --------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str) or self.content is None:
            return self.content or ""
        kinds = sorted({p.type for p in self.content if p.type != "text"})
        if kinds:
            raise Unprocessable(
                f"only text content is supported; this message holds {kinds}", code="unsupported_content"
            )
        return "".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat request; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    max_tokens: int | None = Field(default=None, ge=1, description="Tokens of the whole trajectory.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Same as max_tokens.")
    n: int | None = Field(default=None, ge=1, le=1, description="Only one choice is generated.")
    preset: PresetName = None
    limits: RequestLimits | None = Field(default=None, description="Extension: the solver's limits.")

    @field_validator("messages")
    @classmethod
    def _has_user_message(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("needs a user message: its text is the problem")
        return messages

    def problem(self) -> str:
        text = next(m for m in reversed(self.messages) if m.role == "user").text()
        if not text.strip():
            raise Unprocessable("the last user message is empty", code="invalid_value", param="messages")
        return text

    def solver_limits(self) -> RequestLimits:
        limits = self.limits or RequestLimits()
        tokens = self.max_completion_tokens or self.max_tokens
        return limits.model_copy(update={"max_tokens": tokens}) if tokens is not None else limits

    def sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature if self.temperature is not None else 0.0,
            top_p=self.top_p if self.top_p is not None else 1.0,
            seed=self.seed,
        )


# -- response -------------------------------------------------------------------------------------
class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SolverExtra(BaseModel):
    """The structured result behind the Markdown."""

    answer: str | None
    stop_reason: str
    trace: Trace


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
    mathcoder: SolverExtra


def render_markdown(blocks: list[Block]) -> str:
    """The solution as Markdown: the blocks in the Markdown TIR rendering, whatever format was used."""
    return _MARKDOWN.render_blocks(blocks).text


def finish_reason(stop_reason: str) -> Literal["stop", "length"]:
    return "length" if stop_reason in _LENGTH_STOPS else "stop"


def usage_of(trace: Trace) -> ChatUsage:
    u = trace.metadata.usage
    return ChatUsage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
    )


class MarkdownStream:
    """Runtime events as Markdown pieces, as the model writes them.

    Prose and code go out delta by delta, the cell's fences around its code, each output block when
    its cell has run; so the pieces are the Markdown rendering of the trace being written.  At the
    end the trace's own rendering is the reference, and whatever of it was not sent yet is sent.
    """

    def __init__(self) -> None:
        self.sent = ""
        self.blocks = 0  # blocks begun
        self.in_prose = False  # the last block begun is a text block still being written
        self.open_cell: int | None = None  # the cell whose code is being written

    def _begin(self, block: Block) -> str:
        """The rendering of ``block`` as the next block (empty code: its fences)."""
        piece, _ = _MARKDOWN.render_block(block, first=self.blocks == 0)
        self.blocks += 1
        self.in_prose = False
        return piece

    def _send(self, piece: str) -> str:
        self.sent += piece
        return piece

    def feed(self, event: Event) -> str:
        if isinstance(event, ProseDelta):
            if not self.in_prose:  # a text block renders as its text: nothing before it
                self.blocks += 1
                self.in_prose = True
            return self._send(event.text)
        if isinstance(event, CodeDelta):
            opener = ""
            if self.open_cell != event.index:
                opener = self._begin(CodeBlock(code="")).removesuffix(CODE_CLOSE)
                self.open_cell = event.index
            return self._send(opener + event.text)
        if isinstance(event, CodeCell):
            streamed, self.open_cell = self.open_cell == event.index, None
            return self._send(CODE_CLOSE if streamed else self._begin(CodeBlock(code=event.code)))
        if isinstance(event, ExecutionFinished):
            return self._send(self._begin(OutputBlock(output=event.output)))
        if isinstance(event, FinalAnswer | ErrorEvent) and event.trace is not None:
            full = render_markdown(event.trace.blocks)
            if not full.startswith(self.sent):
                logger.warning("streamed Markdown diverged from the trace's rendering; sending no remainder")
                return ""
            return self._send(full[len(self.sent) :])
        return ""


def token_chunks(text: str, count_tokens: Callable[[str], int], most: int) -> list[str]:
    """``text`` in consecutive pieces of at most ``most`` tokens (``count_tokens``'s), cut between
    words where it can: how OpenAI-style servers stream, a few tokens a chunk."""
    if count_tokens(text) <= most:
        return [text]
    chunks: list[str] = []
    current = ""
    for word in words(text):
        if current and count_tokens(current + word) > most:
            chunks.append(current)
            current = ""
        while count_tokens(word) > most:  # a long word: the longest head that fits, at least a character
            cut = 1
            while cut < len(word) and count_tokens(word[: cut + 1]) <= most:
                cut += 1
            chunks.append(word[:cut])
            word = word[cut:]
        current += word
    if current:
        chunks.append(current)
    return chunks


router = APIRouter(tags=["openai"])


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mathcoder"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


_STARTED = int(time.time())


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=documented({401: "Missing or invalid API key.", 403: "The key lacks the `solve` scope."}),
)
async def list_models(
    request: Request, principal: Annotated[Principal, Depends(needs(Scope.SOLVE))]
) -> ModelList:
    """The served solver (its own name and the backend's)."""
    names = dict.fromkeys(services(request).solver.model_names)
    return ModelList(data=[ModelCard(id=name, created=_STARTED) for name in names])


_CHAT_RESPONSES = trajectory_responses(
    "A chat completion, or with `stream` a text/event-stream of chunks.",
    "The model backend or the sandbox failed.",
)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_CHAT_RESPONSES)
async def chat_completions(
    body: ChatRequest,
    request: Request,
    principal: Annotated[Principal, Depends(needs(Scope.SOLVE))],
) -> Response:
    """OpenAI-compatible: the solver answers the last user message; the trace is in `mathcoder`."""
    app = services(request)
    solver = app.solver
    model = solver.check_model(body.model)
    problem = body.problem()
    preset = solver.preset(body.preset)
    job = solver.submit(
        principal,
        problem,
        preset=preset,
        limits=body.solver_limits(),
        sampling=body.sampling(),
        kind="chatcmpl",
    )
    created = int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        framer = ChatFramer(job, model, created, solver.backend.count_tokens, include_usage)
        return streamed(job, framer, app.settings.keepalive_s)
    final = await final_of(job, request)
    if final is None:
        return Response(status_code=CLIENT_CLOSED)
    completion = ChatCompletion(
        id=job.id,
        created=created,
        model=model,
        choices=[
            Choice(
                message=AssistantMessage(content=render_markdown(final.trace.blocks)),
                finish_reason=finish_reason(final.stop_reason),
            )
        ],
        usage=usage_of(final.trace),
        mathcoder=SolverExtra(answer=final.answer, stop_reason=final.stop_reason, trace=final.trace),
    )
    return json_response(completion)


class ChatFramer:
    """Chat completion chunks: the role, Markdown pieces of at most :data:`CHUNK_TOKENS` tokens, the
    finish (with ``mathcoder``), usage, [DONE]."""

    def __init__(
        self, job: Job, model: str, created: int, count_tokens: Callable[[str], int], include_usage: bool
    ) -> None:
        self.job, self.model, self.created, self.include_usage = job, model, created, include_usage
        self.count_tokens = count_tokens
        self.markdown = MarkdownStream()

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.job.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return frame(json.dumps(body, separators=(",", ":")))

    def _delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish}], **extra)

    def start(self) -> bytes:
        return self._delta({"role": "assistant", "content": ""})

    def frame(self, event: Event) -> bytes:
        out = b""
        piece = self.markdown.feed(event)
        if piece:
            for chunk in token_chunks(piece, self.count_tokens, CHUNK_TOKENS):
                out += self._delta({"content": chunk})
        if isinstance(event, FinalAnswer):
            extra = SolverExtra(answer=event.answer, stop_reason=event.stop_reason, trace=event.trace)
            out += self._delta({}, finish_reason(event.stop_reason), mathcoder=extra.model_dump(mode="json"))
            if self.include_usage:
                out += self._chunk([], usage=usage_of(event.trace).model_dump())
        elif isinstance(event, ErrorEvent):
            # The SDK raises APIError for a chunk that carries "error".
            body = error_body(502, "trajectory_failed", event.message, code="trajectory_failed")
            out += frame(json.dumps(body, separators=(",", ":")))
        return out

    def end(self) -> bytes:
        out = b""
        if self.job.final is None:
            message = "the trajectory was cancelled: the server is shutting down"
            body = error_body(503, "unavailable", message, code="shutting_down")
            out += frame(json.dumps(body, separators=(",", ":")))
        return out + frame("[DONE]")
