"""The HTTP server: ``create_app(settings)`` builds it, ``mathcoder serve`` runs it under uvicorn.

One module per concern: ``settings`` (knobs), ``app`` (factory, lifespan, request middleware,
probes), ``auth`` (API keys and scopes), ``limits`` (admission queue), ``services/`` (what the
server does, apart from HTTP: ``solver``, trajectory jobs; ``sessions``, execution sessions),
``routes/`` (the HTTP surface over the services: ``solve`` ``/v1/solve``, ``openai_api``
``/v1/chat/completions``, ``sessions`` ``/v1/sessions``), ``sse`` (event streams), ``metrics`` (Prometheus), ``logs`` (JSON logs, request ids),
``errors`` (error responses), ``schemas`` (request and response bodies), ``deps`` (what handlers
get from the app).
"""

from __future__ import annotations

from runtime.server.app import ServerStartupError, create_app
from runtime.server.settings import ServerSettings

__all__ = ["ServerSettings", "ServerStartupError", "create_app"]
