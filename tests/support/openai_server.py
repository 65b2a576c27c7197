"""An OpenAI-compatible completions server in front of any backend (a scripted one in the tests).

``POST /v1/completions`` answers with the backend's completion, or with ``stream: true`` with its
pieces as SSE chunks the way vLLM sends them (the stop string left out, named in ``stop_reason``;
usage last).  It lets the real ``openai`` backend and whatever uses it (``mathcoder solve
--backend openai``, a server) run against a deterministic model over real HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from runtime.backends.base import Backend, Completion, CompletionRequest, SamplingParams


def _request_of(body: dict[str, Any]) -> CompletionRequest:
    return CompletionRequest(
        prompt=body["prompt"],
        max_tokens=int(body.get("max_tokens") or 256),
        stop=tuple(body.get("stop") or ()),
        sampling=SamplingParams(
            temperature=float(body.get("temperature") or 0.0),
            top_p=float(body.get("top_p") or 1.0),
            seed=body.get("seed"),
        ),
    )


def _choice(text: str, completion: Completion | None) -> dict[str, Any]:
    if completion is None:
        return {"index": 0, "text": text, "finish_reason": None}
    finish = "length" if completion.finish_reason == "length" else "stop"
    return {"index": 0, "text": text, "finish_reason": finish, "stop_reason": completion.stop}


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def openai_app(backend: Backend) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(http: Request) -> Response:
        body = await http.json()
        request = _request_of(body)
        if not body.get("stream"):
            done = await backend.complete(request)
            return JSONResponse({"choices": [_choice(done.text, done)], "usage": _usage(done)})

        async def events() -> AsyncIterator[bytes]:
            async for item in backend.stream(request):
                if isinstance(item, str):
                    chunk: dict[str, Any] = {"choices": [_choice(item, None)]}
                else:
                    chunk = {"choices": [_choice("", item)]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                    chunk = {"choices": [], "usage": _usage(item)}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
