"""Schemathesis against the live server's own OpenAPI schema: generated requests, no 5xx.

Each operation gets bounded examples, valid (positive) and invalid (negative) by the schema, sent
with a key that holds both scopes to a real server with a scripted model and real kernels.  The
checks: whatever it sends, the answer is a 2xx or a 4xx (``not_a_server_error``), with a status,
content type and body the published schema documents for that operation (the conformance checks;
shown to fail on a route that answers a body its response model does not describe).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case
from schemathesis.openapi import from_url
from support.server import BOTH_KEY, LiveServer, Say, ScriptBook, bearer

from benchmarks.procs import pids_of_uids
from runtime.server import ServerSettings, create_app
from sandbox.pool import KernelPool
from sandbox.settings import SandboxSettings

UIDS = range(68100, 68104)
SANDBOX = SandboxSettings().model_copy(
    update={
        "pool_size": 1,
        "max_kernels": 4,
        "cell_timeout_s": 2,
        "interrupt_grace_s": 1,
        "uid_base": UIDS.start,
        "run_dir": SandboxSettings().run_dir / "test-server" / "schema",
    }
)
OPERATIONS = [
    ("/v1/solve", "POST"),
    ("/v1/chat/completions", "POST"),
    ("/v1/models", "GET"),
    ("/v1/sessions", "POST"),
    ("/v1/sessions/{session_id}/execute", "POST"),
    ("/v1/sessions/{session_id}", "DELETE"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
]
EXAMPLES = 25


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    settings = ServerSettings(
        api_keys=f"{BOTH_KEY} solve,execute fuzzer",
        max_sessions=1,
        session_idle_s=1.0,
        max_session_idle_s=2.0,
        max_cell_timeout_s=2.0,
        keepalive_s=1.0,
    )
    # The model answers any problem at once without code: the fuzzer exercises the HTTP layer.
    book = ScriptBook({}, default=[Say("The answer is \\boxed{1}.", eos=True)])
    server = LiveServer(create_app(settings, backend=book, pool=KernelPool(SANDBOX))).start()
    yield server
    server.stop()
    assert pids_of_uids(UIDS) == []


@pytest.fixture(scope="module")
def schema(live: LiveServer) -> BaseSchema:
    return from_url(f"{live.url}/openapi.json")


def test_the_operation_list_covers_the_schema(schema: BaseSchema) -> None:
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    found = {(op.path, op.method.upper()) for op in operations}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_generated_requests_never_get_a_server_error(
    live: LiveServer, schema: BaseSchema, path: str, method: str
) -> None:
    operation = schema[path][method]
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case[Any]) -> None:
        response = case.call(base_url=live.url, headers=bearer(BOTH_KEY), timeout=30)
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )

    check()
