"""A backend that replays fixed completions: a test double for the agent loop, not for a model.

Each trajectory's script is a list of completions; the backend finds the script by the problem
text in the prompt, and the step by how many times that script was asked before.  It honours stop
strings like a real backend (text up to the first stop string; finish "stop"), so the loop is
exercised exactly as with a model.  Optional per-step delays let tests overlap trajectories.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.backends.base import BackendError, Completion, CompletionRequest
from runtime.backends.stops import cut_at_stop


@dataclass
class Step:
    """What the model writes at one step, and how long it takes to write it."""

    text: str
    eos: bool = False  # the model ends its turn after ``text`` (if no stop string came first)
    delay_s: float = 0.0
    fail: bool = False  # the engine fails here (BackendError): an infrastructure failure, for tests


class ChatMLWords:
    """What a test double needs besides ``complete``: ChatML prompts, whitespace-separated "tokens",
    nothing to close."""

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

    def __init__(self, scripts: dict[str, Sequence[Step | str]]) -> None:
        self.scripts = {
            key: [s if isinstance(s, Step) else Step(s) for s in steps] for key, steps in scripts.items()
        }
        self.calls: dict[str, int] = dict.fromkeys(scripts, 0)
        self.requests: list[CompletionRequest] = []

    def _script_for(self, prompt: str) -> str:
        # The longest problem text found in the prompt (a prompt may quote few-shot problems too).
        found = [key for key in self.scripts if key in prompt]
        if not found:
            raise BackendError("scripted backend: no script for this prompt")
        return max(found, key=lambda key: prompt.rfind(key))

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
