"""A backend that replays fixed completions: a test double for the agent loop, not for a model.

Each trajectory's script is a list of completions; the backend finds the script by the problem
text in the prompt, and the step by how many times that script was asked before.  It honours stop
strings like a real backend (text up to the first stop string; finish "stop"), so the loop is
exercised exactly as with a model.  Optional per-step delays let tests overlap trajectories.

``stream`` writes a step a "token" (a word with the whitespace before it) at a time, through the
same stop-string hold-back as the real engines; an optional ``pace`` hook is awaited before each
token, so a test can hold the model until a client has shown the previous one (streaming that is
real, not a finished step cut up afterwards).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from runtime.backends.base import BackendError, Completion, CompletionRequest
from runtime.backends.stops import StreamedText, cut_at_stop

_WORD = re.compile(r"\s*\S+|\s+")


def words(text: str) -> list[str]:
    """``text`` cut into words, each with the whitespace before it: the test doubles' "tokens", and
    where the server cuts text that is too long for one streamed chunk."""
    return _WORD.findall(text)


@dataclass
class Step:
    """What the model writes at one step, and how long it takes to write it."""

    text: str
    eos: bool = False  # the model ends its turn after ``text`` (if no stop string came first)
    delay_s: float = 0.0
    fail: bool = False  # the engine fails here (BackendError): an infrastructure failure, for tests


class ChatMLWords:
    """What a test double needs besides ``complete``: ChatML prompts, whitespace-separated "tokens",
    a ``stream`` that delivers its finished completion a word at a time, nothing to close."""

    async def complete(self, request: CompletionRequest) -> Completion:
        raise NotImplementedError

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        completion = await self.complete(request)
        for piece in words(completion.text):
            yield piece
        yield completion

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return (
            "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            + "<|im_start|>assistant\n"
        )

    async def aclose(self) -> None:
        return None


class ScriptedBackend(ChatMLWords):
    """Replays ``scripts[problem]`` step by step; a step past the end is an error."""

    name = "scripted"

    def __init__(
        self,
        scripts: dict[str, Sequence[Step | str]],
        *,
        pace: Callable[[int], Awaitable[None]] | None = None,
        tokens: Callable[[str], list[str]] = words,
    ) -> None:
        self.scripts = {
            key: [s if isinstance(s, Step) else Step(s) for s in steps] for key, steps in scripts.items()
        }
        self.calls: dict[str, int] = dict.fromkeys(scripts, 0)
        self.requests: list[CompletionRequest] = []
        self.pace = pace  # awaited with the token's number (across the backend's life) before it
        self.tokens = tokens  # how a step's text is cut into the pieces ``stream`` writes
        self.tokens_written = 0

    def _script_for(self, prompt: str) -> str:
        # The longest problem text found in the prompt (a prompt may quote few-shot problems too).
        found = [key for key in self.scripts if key in prompt]
        if not found:
            raise BackendError("scripted backend: no script for this prompt")
        return max(found, key=lambda key: prompt.rfind(key))

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        completion = await self.complete(request)
        written = completion.text + (completion.stop or "")
        shown = StreamedText(request.stop)
        for token in self.tokens(written):
            if self.pace is not None:
                await self.pace(self.tokens_written)
            self.tokens_written += 1
            piece = shown.piece(token)
            if piece:
                yield piece
        rest = shown.rest(completion.text)
        if rest:
            yield rest
        yield completion

    async def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        key = self._script_for(request.prompt)
        index = self.calls[key]
        self.calls[key] += 1
        if index >= len(self.scripts[key]):
            raise BackendError(f"scripted backend: script {key!r} has no step {index}")
        step = self.scripts[key][index]
        if step.delay_s:
            await asyncio.sleep(step.delay_s)
        if step.fail:
            raise BackendError(f"scripted backend: step {index} of {key!r} fails (scripted)")
        text, stop = cut_at_stop(step.text, request.stop)
        if stop is not None:
            return Completion(
                text=text, finish_reason="stop", stop=stop, completion_tokens=self.count_tokens(text)
            )
        words = text.split()
        if len(words) > request.max_tokens:
            cut = " ".join(words[: request.max_tokens])
            return Completion(text=cut, finish_reason="length", completion_tokens=request.max_tokens)
        return Completion(
            text=text,
            finish_reason="eos" if step.eos else "length",
            completion_tokens=self.count_tokens(text),
        )
