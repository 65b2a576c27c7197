"""Structured logs: one JSON object per line, each carrying the id of the request it belongs to.

The request id lives in a context variable set by the request middleware, so every record logged
while serving a request — in the handler, in the trajectory task it starts, in the sandbox — is
stamped with it without passing it around.  ``configure_logging`` (called by ``mathcoder serve``,
never by ``create_app``) sends records through a queue to a writer thread, so that a slow stderr
never blocks the event loop.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
import uuid
from contextvars import ContextVar
from typing import Any

_request_id: ContextVar[str | None] = ContextVar("mathcoder_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> None:
    _request_id.set(value)


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is a sane token (so logs stay parseable), else a new one."""
    if header is not None and _VALID_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...extra fields, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class LogWriter:
    """The thread that writes queued records; ``stop`` flushes them and may be called again."""

    def __init__(self, listener: logging.handlers.QueueListener) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._listener.stop()


def configure_logging(level: str = "info") -> LogWriter:
    """Route every logger to JSON lines on stderr, written by a background thread."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter("%(message)s"))
    listener = logging.handlers.QueueListener(records, writer)
    # Formatted where the record is made (where the request id's context is), written by the thread.
    enqueue = logging.handlers.QueueHandler(records)
    enqueue.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(enqueue)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    listener.start()
    writer_thread = LogWriter(listener)
    atexit.register(writer_thread.stop)
    return writer_thread
