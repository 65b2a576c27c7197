"""``mathcoder serve``: the HTTP server (``runtime.server``) under uvicorn.

Each option overrides the ``ServerSettings`` field of the same name (so also its
``MATHCODER_SERVER_*`` variable); the other fields are set through the environment only.  Logs
are JSON lines on stderr.  SIGTERM or Ctrl-C shuts down gracefully: no new connections, in-flight
requests get ``shutdown_grace_s`` to finish, then the app cancels what is left, closes sessions
and kills every kernel.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from runtime.backends.factory import BACKEND_KINDS

STARTUP_FAILED = 3


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (MATHCODER_SERVER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (MATHCODER_SERVER_PORT).")] = None,
    backend: Annotated[
        str | None,
        typer.Option(help=f"{', '.join(BACKEND_KINDS)} (MATHCODER_SERVER_BACKEND); default: auto."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model path or id; default: the embedded SmolLM2-135M.")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="Model server URL for --backend openai.")] = None,
    adapter: Annotated[
        str | None,
        typer.Option(help="default (the shipped LoRA adapter), none (the base model) or a folder."),
    ] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="API keys, `KEY SCOPE[,SCOPE] [NAME]` per line.")
    ] = None,
    no_auth: Annotated[
        bool | None, typer.Option("--no-auth", help="Serve without API keys (loopback hosts only).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
) -> None:
    """Serve the solver over HTTP: /v1/solve, /v1/chat/completions (OpenAI), /v1/sessions."""
    # Imported here so that `mathcoder --help` works without the server's dependencies.
    import uvicorn
    from pydantic import ValidationError

    from runtime.server import ServerSettings, create_app
    from runtime.server.auth import AuthConfigError
    from runtime.server.logs import configure_logging

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "backend": backend,
        "model": model,
        "base_url": base_url,
        "adapter": adapter,
        "api_keys_file": api_keys_file,
        "no_auth": no_auth,
        "log_level": log_level,
    }
    try:
        settings = ServerSettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise typer.BadParameter(
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        ) from exc
    listener = configure_logging(settings.log_level)

    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, and a process killed by a
    # signal runs no atexit hook: flush the log writer first, then die of the signal as expected.
    def flush_then_die(signum: int, frame: object) -> None:
        listener.stop()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, flush_then_die)
    # Progress bars (model loading) would interleave with the JSON lines on stderr.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app = create_app(settings)
    except AuthConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON handler on the root logger
        access_log=False,  # the request middleware writes one access record per request
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        ws="none",
        lifespan="on",
        server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    listener.stop()
    if not server.started:
        raise typer.Exit(STARTUP_FAILED)
