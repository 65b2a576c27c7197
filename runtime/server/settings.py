"""Settings of the HTTP server (environment variables prefixed ``MATHCODER_SERVER_``).

Every limit the server enforces lives here with its unit in its name.  The sandbox keeps its own
settings (``MATHCODER_SANDBOX_*``) and the model its own (``MATHCODER_*``); these are the knobs of
the HTTP layer: where to listen, who may call, how much work is admitted, and the ceilings that
request limits are clamped to.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.backends.factory import BackendChoiceError, BackendKind, check_backend
from runtime.loop import DEFAULT_MAX_TOKENS
from runtime.settings import RuntimeSettings


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerSettings(BaseSettings):
    """The server's configuration; ``mathcoder serve`` options override the matching fields."""

    model_config = SettingsConfigDict(env_prefix="MATHCODER_SERVER_", extra="forbid")

    # -- where ------------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address to bind; loopback unless deployed.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port).")

    # -- which model ------------------------------------------------------------------------------
    backend: BackendKind = Field(
        default="auto", description="Model backend (see `mathcoder solve --backend`)."
    )
    model: str | None = Field(
        default=None, description="Model path or id; unset: the embedded default model."
    )
    base_url: str | None = Field(default=None, description="Model server URL for the openai backend.")
    adapter: str | None = Field(
        default=None,
        description="LoRA adapter on the default model: default (the shipped one), none (the plain base "
        "model) or an adapter folder; unset: MATHCODER_ADAPTER, else default.",
    )

    def runtime_settings(self) -> RuntimeSettings:
        """The runtime's settings with this server's adapter choice (the environment's where unset)."""
        return RuntimeSettings.with_adapter(self.adapter)

    served_model_name: str = Field(
        default="mathcoder",
        description="The name clients pass as `model` (the backend's own name is accepted too).",
    )
    default_preset: str | None = Field(
        default=None,
        description="Prompt preset when a request names none; unset: the model's own (tir if none).",
    )

    # -- who --------------------------------------------------------------------------------------
    api_keys: SecretStr | None = Field(
        default=None,
        description="API keys, one entry per line or separated by ';': `KEY SCOPE[,SCOPE] [NAME]`, "
        "scopes `solve` and `execute` (MATHCODER_SERVER_API_KEYS).",
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of API keys in the same format, `#` starts a comment."
    )
    no_auth: bool = Field(
        default=False,
        description="Serve without API keys (every scope to every caller); refused unless `host` is loopback.",
    )

    # -- how much ---------------------------------------------------------------------------------
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body; more: 413.")
    max_running: int = Field(default=16, ge=1, description="Trajectories running at once.")
    max_queued: int = Field(
        default=64, ge=0, description="Trajectories waiting for a running slot; one more: 429 + Retry-After."
    )
    per_key_concurrency: int = Field(
        default=8, ge=1, description="Trajectories one API key may have running or queued; more: 429."
    )
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After sent with a 429.")
    keepalive_s: float = Field(
        default=10.0, gt=0, description="An SSE comment is sent when a stream was silent this long."
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="On shutdown, how long in-flight work may take to finish before it is cancelled.",
    )

    # -- ceilings of a trajectory (request limits are clamped to them) -------------------------------
    max_rounds: int = Field(default=16, ge=0, description="Most code cells of one trajectory.")
    max_tokens: int = Field(default=4096, ge=1, description="Most tokens one trajectory may generate.")
    max_cell_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest per-cell timeout a request may ask."
    )
    max_wall_time_s: float = Field(default=300.0, gt=0, description="Longest trajectory a request may ask.")
    default_rounds: int = Field(default=8, ge=0, description="max_rounds when a request sets none.")
    default_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS, ge=1, description="max_tokens when a request sets none."
    )
    default_wall_time_s: float = Field(
        default=120.0, gt=0, description="wall_time_s when a request sets none."
    )

    # -- execution sessions -----------------------------------------------------------------------
    max_sessions: int = Field(default=8, ge=0, description="Execution sessions open at once (all keys).")
    max_sessions_per_key: int = Field(default=4, ge=0, description="Execution sessions one key may hold.")
    session_idle_s: float = Field(
        default=300.0, gt=0, description="A session idle this long expires and its kernel is released."
    )
    max_session_idle_s: float = Field(
        default=3600.0, gt=0, description="Longest idle timeout a session may ask for."
    )
    session_lease_timeout_s: float = Field(
        default=30.0, gt=0, description="How long creating a session may wait for a free kernel; then 503."
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if self.no_auth and not is_loopback(self.host):
            raise ValueError(
                f"no_auth is refused on host {self.host!r}: serving without API keys is allowed only on a "
                "loopback address (MATHCODER_SERVER_HOST=127.0.0.1); set MATHCODER_SERVER_API_KEYS instead"
            )
        try:
            check_backend(self.backend, self.model, self.base_url)
        except BackendChoiceError as exc:
            raise ValueError(f"{exc} (MATHCODER_SERVER_BACKEND, _BASE_URL, _MODEL)") from exc
        return self
