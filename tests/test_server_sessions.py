"""``/v1/sessions``: stateful execution in real kernels, its own API-key scope, bounds and expiry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.server import (
    EXEC_KEY,
    OTHER_KEY,
    LiveServer,
    ScriptBook,
    bearer,
    http,
    leased_drops_to_zero,
    sandbox,
    settings,
)

from benchmarks.procs import pids_of_uids
from runtime.server import create_app
from sandbox.pool import KernelPool

UIDS = range(68010, 68018)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    app = create_app(
        settings(), backend=ScriptBook({}), pool=KernelPool(sandbox(UIDS.start, max_kernels=len(UIDS)))
    )
    server = LiveServer(app).start()
    yield server
    server.stop()
    assert pids_of_uids(UIDS) == []


async def execute(c: httpx.AsyncClient, sid: str, code: str, **extra: Any) -> httpx.Response:
    return await c.post(f"/v1/sessions/{sid}/execute", json={"code": code, **extra})


async def test_a_session_keeps_state_across_cells_and_errors_are_results(live: LiveServer) -> None:
    async with http(live.url, headers=bearer(EXEC_KEY), timeout=60) as c:
        created = await c.post("/v1/sessions", json={"idle_timeout_s": 10**6})
        assert created.status_code == 201
        info = created.json()
        assert info["idle_timeout_s"] == 3600.0  # clamped to the ceiling
        sid = info["id"]
        assert (await execute(c, sid, "x = 20")).json()["result"]["status"] == "ok"
        out = (await execute(c, sid, "print(x + 22)")).json()
        assert (out["output"], out["execution_count"]) == ("42", 2)
        failed = (await execute(c, sid, "1 / 0")).json()
        assert (
            failed["result"]["status"] == "error"
            and failed["result"]["error"]["ename"] == "ZeroDivisionError"
        )
        assert (await c.delete(f"/v1/sessions/{sid}")).status_code == 204
        gone = await execute(c, sid, "print(x)")
        assert gone.status_code == 410 and "deleted by its owner" in gone.json()["error"]["message"]
    await leased_drops_to_zero(live)


async def test_a_crashed_kernel_in_a_session_is_replaced_and_its_state_is_gone(live: LiveServer) -> None:
    restarts = live.services.pool.stats().restarts
    async with http(live.url, headers=bearer(EXEC_KEY), timeout=60) as c:
        sid = (await c.post("/v1/sessions")).json()["id"]
        await execute(c, sid, "x = 1")
        crashed = (await execute(c, sid, "import os\nos._exit(3)")).json()["result"]
        assert crashed["status"] == "crashed" and crashed["kernel_restarted"] is True
        after = (await execute(c, sid, "print(x)")).json()["result"]
        assert after["status"] == "error" and after["error"]["ename"] == "NameError"
        assert (await execute(c, sid, "print('fresh')")).json()["output"] == "fresh"
        await c.delete(f"/v1/sessions/{sid}")
    assert live.services.pool.stats().restarts == restarts + 1
    await leased_drops_to_zero(live)


async def test_sessions_are_private_bounded_and_validated(live: LiveServer) -> None:
    async with (
        http(live.url, headers=bearer(EXEC_KEY), timeout=60) as mine,
        http(live.url, headers=bearer(OTHER_KEY), timeout=60) as theirs,
    ):
        assert (await execute(mine, "sess-unknown", "1")).status_code == 404
        assert (await mine.delete("/v1/sessions/sess-unknown")).status_code == 404
        first = (await mine.post("/v1/sessions")).json()["id"]
        assert (await execute(theirs, first, "1")).status_code == 404  # another key's: as if absent
        assert (await theirs.delete(f"/v1/sessions/{first}")).status_code == 404
        second = (await mine.post("/v1/sessions")).json()["id"]
        refused = await mine.post("/v1/sessions")  # the per-key bound (2)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
        assert "MAX_SESSIONS_PER_KEY" in refused.json()["error"]["message"]
        third = (await theirs.post("/v1/sessions")).json()["id"]
        refused = await theirs.post("/v1/sessions")  # the global bound (3)
        assert (
            refused.status_code == 429
            and "MATHCODER_SERVER_MAX_SESSIONS=3" in refused.json()["error"]["message"]
        )
        for bad, needle in [
            ({"code": 1}, "body.code: Input should be a valid string"),
            ({"code": "1", "timeout_s": 0}, "body.timeout_s: Input should be greater than 0"),
            ({}, "body.code: Field required"),
        ]:
            r = await mine.post(f"/v1/sessions/{first}/execute", json=bad)
            assert r.status_code == 422 and needle in r.json()["error"]["message"]
        r = await mine.post("/v1/sessions", json={"idle_timeout_s": -1})
        assert r.status_code == 422
        for sid, c in ((first, mine), (second, mine), (third, theirs)):
            assert (await c.delete(f"/v1/sessions/{sid}")).status_code == 204
    await leased_drops_to_zero(live)


async def test_an_idle_session_expires_and_releases_its_kernel(live: LiveServer) -> None:
    async with http(live.url, headers=bearer(EXEC_KEY), timeout=60) as c:
        sid = (await c.post("/v1/sessions", json={"idle_timeout_s": 0.3})).json()["id"]
        assert (await execute(c, sid, "x = 1")).status_code == 200  # using it restarts the clock
        await live.call(lambda: live.services.sessions.wait_closed(sid))
        r = await execute(c, sid, "print(x)")
        assert r.status_code == 410 and "expired after 0.3 s idle" in r.json()["error"]["message"]
    await leased_drops_to_zero(live)
