"""``POST /v1/solve``, and what every trajectory route shares: waiting for a job's final answer
while watching for the client to leave, a JSON response, an SSE stream of a job's events.

The jobs themselves are ``runtime.server.services.solver``'s; the OpenAI-compatible endpoint
(``routes.openai_api``) starts and reads them the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from runtime.events import ErrorEvent, Event, FinalAnswer
from runtime.server.auth import Principal, Scope
from runtime.server.deps import needs, services
from runtime.server.errors import TrajectoryFailed, Unavailable
from runtime.server.schemas import (
    DoneEvent,
    SolveRequest,
    SolveResponse,
    trajectory_responses,
)
from runtime.server.services.solver import CLIENT_CLOSED, Job
from runtime.server.sse import EventStream, Framer, frame

logger = logging.getLogger(__name__)


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def final_of(job: Job, request: Request) -> FinalAnswer | None:
    """The job's final answer once it ends; None when the client left first (the job is then
    cancelled).  A failed or cancelled trajectory raises the error the client should get."""
    assert job.task is not None
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({job.task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if job.task not in done:
        logger.info("client left; cancelling %s", job.id)
        await job.cancel()
        return None
    if isinstance(job.final, FinalAnswer):
        return job.final
    if isinstance(job.final, ErrorEvent):
        raise TrajectoryFailed(job.final.message, code="trajectory_failed")
    raise Unavailable("the trajectory was cancelled: the server is shutting down", code="shutting_down")


def json_response(model: BaseModel) -> Response:
    """The model as JSON, serialised once (returning it would make FastAPI validate it again)."""
    return Response(model.model_dump_json(), media_type="application/json")


def streamed(job: Job, framer: Framer[Event], keepalive_s: float) -> EventStream[Event]:
    """An SSE response of the job's events that cancels the job when it ends before the job does."""

    async def close(client_left: bool) -> None:
        if client_left:
            logger.info("client left the stream; cancelling %s", job.id)
        await job.cancel()

    return EventStream(
        job.events, framer, keepalive_s=keepalive_s, on_close=close, headers={"X-MathCoder-Job": job.id}
    )


router = APIRouter(tags=["solve"])

_SOLVE_RESPONSES = trajectory_responses(
    "The result, or with `stream: true` a text/event-stream of runtime events ending with `done`.",
    "The model backend or the sandbox failed during the trajectory.",
)


@router.post("/v1/solve", response_model=SolveResponse, responses=_SOLVE_RESPONSES)
async def solve(
    body: SolveRequest,
    request: Request,
    principal: Annotated[Principal, Depends(needs(Scope.SOLVE))],
) -> Response:
    """Solve a problem with the tool-integrated model; JSON, or Server-Sent Events with `stream`."""
    app = services(request)
    solver = app.solver
    model = solver.check_model(body.model)
    preset = solver.preset(body.preset)
    job = solver.submit(
        principal, body.problem, preset=preset, limits=body.limits, sampling=body.sampling, kind="solve"
    )
    if body.stream:
        return streamed(job, SolveFramer(job), app.settings.keepalive_s)
    final = await final_of(job, request)
    if final is None:
        return Response(status_code=CLIENT_CLOSED)
    result = SolveResponse(
        id=job.id,
        model=model,
        preset=preset.name,
        answer=final.answer,
        stop_reason=final.stop_reason,
        trace=final.trace,
        usage=final.trace.metadata.usage,
        timings=job.timings(),
        limits=job.limits,
    )
    return json_response(result)


class SolveFramer:
    """``/v1/solve`` streams: one ``event: <type>`` frame per runtime event, then ``event: done``."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def start(self) -> bytes:
        return b""

    def frame(self, event: Event) -> bytes:
        return frame(event.model_dump_json(), event=event.type)

    def end(self) -> bytes:
        job = self.job
        done = DoneEvent(
            id=job.id, ok=isinstance(job.final, FinalAnswer), timings=job.timings(), limits=job.limits
        )
        return frame(done.model_dump_json(), event="done")
