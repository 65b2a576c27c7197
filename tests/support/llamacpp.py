"""Whether the tests can run llama-server here: ``make test`` builds it and sets
``MATHCODER_TEST_LLAMACPP=require``, so that a missing binary fails there instead of skipping."""

from __future__ import annotations

import os

from runtime.backends.base import BackendError
from runtime.backends.llamacpp import LlamaCppSettings, find_server_binary


def llama_server_missing() -> str | None:
    """None when llama-server is here; else why not (raising when the tests require it)."""
    try:
        find_server_binary(LlamaCppSettings())
    except BackendError as exc:
        if os.environ.get("MATHCODER_TEST_LLAMACPP") == "require":
            raise
        return f"no llama-server here ({exc})"
    return None
