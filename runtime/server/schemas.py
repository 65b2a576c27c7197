"""Request and response bodies of the native API (``/v1/solve``, ``/v1/sessions``) and the probes.

Limits a request asks for are optional and clamped to the server's ceilings (never refused for
being large); the response says which limits applied.  Text fields reject lone surrogates, which
JSON can carry but UTF-8 cannot, so that nothing accepted fails later when it is encoded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runtime.prompts import PRESETS
from runtime.trace import Trace, Usage
from sandbox.result import ExecutionResult


def _valid_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def _known_preset(value: str | None) -> str | None:
    if value is not None and value not in PRESETS:
        raise ValueError(f"unknown prompt preset {value!r}; choose one of {sorted(PRESETS)}")
    return value


Text = Annotated[str, AfterValidator(_valid_text)]
Problem = Annotated[
    str, Field(min_length=1, max_length=100_000), AfterValidator(_valid_text), AfterValidator(_not_blank)
]
PresetName = Annotated[
    str | None,
    AfterValidator(_known_preset),
    Field(description=f"Prompt preset: one of {sorted(PRESETS)}; unset: the server's default."),
]
SEED_MAX = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RequestLimits(_Strict):
    """Budgets a request asks for; each is clamped to the server's ceiling, unset ones take its default."""

    max_rounds: int | None = Field(default=None, ge=0, description="Most code cells executed.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens the model writes in all.")
    cell_timeout_s: float | None = Field(default=None, gt=0, description="Wall-clock limit of one cell.")
    wall_time_s: float | None = Field(default=None, gt=0, description="Whole-trajectory time budget.")


class EffectiveLimits(BaseModel):
    """The limits that applied, after clamping."""

    max_rounds: int
    max_tokens: int
    cell_timeout_s: float
    wall_time_s: float


class Sampling(_Strict):
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 means greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, description="Per-request seed.")


class SolveRequest(_Strict):
    problem: Problem = Field(description="The math problem, in natural language.")
    model: str | None = Field(default=None, description="The served model's name; unset: the served model.")
    preset: PresetName = None
    sampling: Sampling = Field(default_factory=Sampling)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    stream: bool = Field(
        default=False,
        description="Server-Sent Events: one event per runtime event (text, code, execution_started, "
        "execution, final or error), then `done`.",
    )


class SolveResponse(BaseModel):
    id: str
    object: Literal["solve.result"] = "solve.result"
    model: str
    preset: str
    answer: str | None
    stop_reason: str
    trace: Trace
    usage: Usage
    timings: dict[str, float] = Field(description="queue_s, generate_s, execute_s, total_s (seconds).")
    limits: EffectiveLimits


class DoneEvent(BaseModel):
    """The last event of a ``/v1/solve`` stream: ``ok`` false when it ended in an error or was cut short."""

    id: str
    ok: bool
    timings: dict[str, float]
    limits: EffectiveLimits


class SessionCreate(_Strict):
    idle_timeout_s: float | None = Field(
        default=None, gt=0, description="Expire after this long without a request; clamped to the ceiling."
    )


class SessionInfo(BaseModel):
    id: str
    created_at: float = Field(description="Unix time.")
    idle_timeout_s: float
    expires_at: float = Field(description="Unix time at which the session expires if left idle.")
    executions: int


class ExecuteRequest(_Strict):
    code: Annotated[Text, Field(max_length=1_000_000)] = Field(description="A Python cell.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Cell time limit; unset: the sandbox's; clamped to the ceiling."
    )


class ExecuteResponse(BaseModel):
    session_id: str
    execution_count: int
    result: ExecutionResult
    output: str = Field(description="The output as a model would be shown it (condensed, cut).")


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="OpenAI-style error type, e.g. invalid_request_error.")
    code: str | None = Field(default=None, description="A stable machine-readable code, e.g. queue_full.")
    param: str | None = None
    status: int
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """Every error response (OpenAI's shape, so its SDK raises its typed errors)."""

    error: ErrorDetail


def documented(errors: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, each with the error body's schema."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in errors.items()}


def trajectory_responses(ok: str, failed: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route that runs a trajectory: JSON or an event stream (``ok``),
    and the errors every such route can return (``failed``: what a 502 means on this route)."""
    return {
        200: {"description": ok, "content": {"text/event-stream": {}}},
        **documented(
            {
                400: "Malformed JSON.",
                401: "Missing or invalid API key.",
                403: "The key lacks the `solve` scope.",
                404: "Unknown model.",
                413: "Body too large.",
                422: "Invalid request.",
                429: "Queue full or per-key limit reached; see Retry-After.",
                502: failed,
                503: "Shutting down.",
            }
        ),
    }


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    model: str | None = None
    pool: dict[str, Any] = Field(default_factory=dict)
