"""``/v1/sessions``: create a stateful execution session, run cells in it, delete it (the
service is ``runtime.server.services.sessions.SessionManager``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from runtime.server.auth import Principal, Scope
from runtime.server.deps import needs, services
from runtime.server.schemas import ExecuteRequest, ExecuteResponse, SessionCreate, SessionInfo, documented

router = APIRouter(tags=["sessions"])

_COMMON = documented(
    {
        400: "Malformed JSON.",
        401: "Missing or invalid API key.",
        403: "The key lacks the `execute` scope.",
        413: "Body too large.",
        422: "Invalid request.",
    }
)
_ID = documented({404: "No such session (or another key's).", 410: "The session expired or was deleted."})


@router.post(
    "/v1/sessions",
    status_code=201,
    response_model=SessionInfo,
    responses={**_COMMON, **documented({429: "Too many sessions.", 503: "No kernel free."})},
)
async def create_session(
    request: Request,
    principal: Annotated[Principal, Depends(needs(Scope.EXECUTE))],
    body: SessionCreate | None = None,
) -> SessionInfo:
    """Open a session: a kernel of its own whose state lasts across cells until deleted or expired."""
    session = await services(request).sessions.create(principal.name, body.idle_timeout_s if body else None)
    return session.info()


@router.post(
    "/v1/sessions/{session_id}/execute", response_model=ExecuteResponse, responses={**_COMMON, **_ID}
)
async def execute(
    session_id: str,
    body: ExecuteRequest,
    request: Request,
    principal: Annotated[Principal, Depends(needs(Scope.EXECUTE))],
) -> ExecuteResponse:
    """Run a cell in the session's kernel; a failing cell is a result (status), not an HTTP error."""
    app = services(request)
    session, result = await app.sessions.execute(session_id, principal.name, body.code, body.timeout_s)
    return ExecuteResponse(
        session_id=session.id,
        execution_count=session.executions,
        result=result,
        output=result.prompt_text(app.pool.settings.prompt_output_chars),
    )


@router.delete("/v1/sessions/{session_id}", status_code=204, responses={**_COMMON, **_ID})
async def delete_session(
    session_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(needs(Scope.EXECUTE))],
) -> Response:
    """Close the session and release its kernel (waits for a running cell)."""
    await services(request).sessions.delete(session_id, principal.name)
    return Response(status_code=204)
