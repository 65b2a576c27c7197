"""The interface every model backend implements, and the request/response types it speaks.

The agent loop only ever asks a backend for one thing: continue this text until one of these stop
strings, the end of the model's turn, or a token budget — and tell me why you stopped.  Backends
batch concurrent requests themselves (the loop issues them from many trajectories at once), so a
single ``complete`` call is the whole contract; ``stream`` is the same call with the text delivered
as the model writes it (each row of a batch streams its own), which is what streaming clients see.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "eos", "length"]
"""stop: a stop string was produced; eos: the model ended its turn; length: the token budget ran out."""


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="0 means greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, description="Per-request seed where the backend supports one.")


class CompletionRequest(BaseModel):
    """Continue ``prompt`` (already rendered, chat template applied) for at most ``max_tokens``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    stop: tuple[str, ...] = ()
    max_tokens: int = Field(default=512, ge=1)
    sampling: SamplingParams = Field(default_factory=SamplingParams)


class Completion(BaseModel):
    """What the model wrote.  ``text`` excludes the stop string; ``stop`` says which one ended it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    finish_reason: FinishReason
    stop: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = Field(
        default=0, description="Of prompt_tokens, those the engine took from its cache instead of computing."
    )


class BackendError(RuntimeError):
    """The backend failed (server unreachable after retries, model failed to load, ...)."""


class Backend(Protocol):
    """A model that continues text.  Implementations: transformers, vllm, openai, scripted (tests)."""

    name: str

    async def complete(self, request: CompletionRequest) -> Completion:
        """Continue the prompt; concurrent calls are batched by the backend where it can."""
        ...

    def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        """``complete``, as it happens: text pieces as the model writes them, then the ``Completion``.

        The pieces join to exactly the ``Completion``'s text; text that may be the beginning of a stop
        string is held back until it is known not to be, so no piece holds part of one.  Leaving the
        iterator early (``aclose``, a cancelled consumer) stops the generation."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's tokenizer (an estimate where the backend has none)."""
        ...

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to ``messages``, ending where the assistant writes."""
        ...

    async def aclose(self) -> None: ...
