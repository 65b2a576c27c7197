"""Every error the API answers with, and the one place that turns exceptions into responses.

Errors share OpenAI's shape, ``{"error": {"message", "type", "code", "param", "request_id"}}``, so
the official SDK raises its typed exceptions for them and every other client parses one format.
Handlers are registered by ``install_handlers``; the request middleware renders anything that
escapes them as a 500 (``internal_error``) with the request id, and logs the traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.server.logs import current_request_id
from sandbox.errors import PoolClosed, PoolFull, SandboxError


class ApiError(Exception):
    """An answer other than success, with its status, OpenAI-style type, message and headers."""

    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status, type = 400, "invalid_request_error"


class Unauthorized(ApiError):
    status, type = 401, "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, type = 403, "permission_error"


class NotFound(ApiError):
    status, type = 404, "not_found_error"


class Gone(ApiError):
    status, type = 410, "not_found_error"


class PayloadTooLarge(ApiError):
    status, type = 413, "invalid_request_error"


class Unprocessable(ApiError):
    status, type = 422, "invalid_request_error"


class TooManyRequests(ApiError):
    status, type = 429, "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: int, code: str) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class TrajectoryFailed(ApiError):
    """The model backend or the sandbox failed during a trajectory (``runtime.events.ErrorEvent``)."""

    status, type = 502, "trajectory_failed"


class Unavailable(ApiError):
    status, type = 503, "unavailable"


def error_body(
    status: int, type_: str, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type_,
            "code": code,
            "param": param,
            "status": status,
            "request_id": current_request_id(),
        }
    }


def error_response(exc: ApiError) -> JSONResponse:
    body = error_body(exc.status, exc.type, exc.message, code=exc.code, param=exc.param)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def internal_error_body() -> bytes:
    """The body of a 500: no detail of the failure (that goes to the log), the request id to find it."""
    message = "internal server error; the server log has the details under this request id"
    return json.dumps(error_body(500, "server_error", message)).encode()


def describe_validation(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One readable line per problem, e.g. ``body.limits.max_rounds: Input should be ...``."""
    lines = []
    first: str | None = None
    for err in errors:
        loc = ".".join(str(part) for part in err.get("loc", ()))
        first = first or loc
        lines.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(lines) or "invalid request", first


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that map exceptions to error responses (the only ones the app has)."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(err.get("type") == "json_invalid" for err in errors):
            detail = next(err for err in errors if err.get("type") == "json_invalid")
            reason = (detail.get("ctx") or {}).get("error", "malformed JSON")
            return error_response(
                BadRequest(f"the request body is not valid JSON: {reason}", code="invalid_json")
            )
        message, param = describe_validation(errors)
        return error_response(Unprocessable(message, code="invalid_value", param=param))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 413:
            return error_response(PayloadTooLarge(str(exc.detail), code="body_too_large"))
        if exc.status_code == 404:
            return error_response(NotFound(str(exc.detail), code="not_found"))
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "error parsing the body": bytes that are not UTF-8, JSON nested past the
            # parser's recursion limit.  Said as what it is, under the same code as other bad JSON.
            cause = exc.__cause__
            why = {
                UnicodeDecodeError: "it is not UTF-8 text",
                RecursionError: "it nests too deeply",
            }.get(type(cause), f"{type(cause).__name__}")
            return error_response(
                BadRequest(f"the request body is not valid JSON: {why}", code="invalid_json")
            )
        kind = BadRequest if exc.status_code < 500 else ApiError
        return error_response(kind(str(exc.detail), headers=exc.headers, status=exc.status_code))

    async def sandbox_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SandboxError)
        if isinstance(exc, PoolFull):
            return error_response(TooManyRequests(str(exc), retry_after_s=2, code="sandbox_busy"))
        code = "shutting_down" if isinstance(exc, PoolClosed) else "sandbox_error"
        return error_response(Unavailable(f"{type(exc).__name__}: {exc}", code=code))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(SandboxError, sandbox_error)
