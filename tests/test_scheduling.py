"""Self-consistency voting and the many-trajectory scheduler."""

from __future__ import annotations

import asyncio

import pytest

from runtime.consistency import majority_vote
from runtime.scheduler import RoundsBarrier, solve_all


def test_votes_group_equivalent_answers() -> None:
    vote = majority_vote(["0.5", "\\frac{1}{2}", "3", None, "1/2", "3"])
    assert (vote.answer, vote.votes) == ("0.5", 3)
    assert vote.groups == (("0.5", 3), ("3", 2))


def test_ties_go_to_the_answer_seen_first_and_none_never_wins() -> None:
    assert majority_vote(["7", "8", "8", "7"]).answer == "7"
    assert majority_vote([None, None]).answer is None
    assert majority_vote([None, "2", None]).answer == "2"


async def test_solve_all_bounds_concurrency() -> None:
    started: list[int] = []
    running = 0
    peak = 0
    two_running = asyncio.Event()
    release = asyncio.Event()

    async def one(i: int, problem: str) -> str:
        nonlocal running, peak
        started.append(i)
        running += 1
        peak = max(peak, running)
        if running == 2:
            two_running.set()
        await release.wait()
        running -= 1
        return problem.upper()

    async def drive() -> list[tuple[int, str]]:
        return [item async for item in solve_all(["a", "b", "c", "d", "e"], one, concurrency=2)]

    consumer = asyncio.create_task(drive())
    await two_running.wait()
    assert started == [0, 1]  # the third waits for a free place
    release.set()
    results = await consumer
    assert peak == 2
    assert sorted(results) == [(0, "A"), (1, "B"), (2, "C"), (3, "D"), (4, "E")]


async def test_cancelling_the_consumer_cancels_running_trajectories() -> None:
    cancelled = 0
    started = asyncio.Event()

    async def one(_i: int, _p: str) -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise

    async def drive() -> None:
        async for _ in solve_all(["x", "y", "z"], one, concurrency=3):
            pass

    task = asyncio.create_task(drive())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == 3


async def test_rounds_barrier_never_overlaps_generation_and_execution() -> None:
    barrier = RoundsBarrier(live=3)
    log: list[tuple[str, int]] = []

    async def trajectory(i: int, cells: int) -> None:
        try:
            for _ in range(cells):
                await barrier.phase("generate")
                log.append(("generate", i))
                await barrier.phase("execute")
                log.append(("execute", i))
            await barrier.phase("generate")
            log.append(("generate", i))
        finally:
            barrier.leave()

    await asyncio.gather(trajectory(0, 1), trajectory(1, 2), trajectory(2, 0))
    phases = [kind for kind, _ in log]
    # Rounds: all three generate, the two with cells execute, then generate again, and so on.
    assert phases[:3] == ["generate"] * 3
    assert phases[3:5] == ["execute"] * 2
    assert phases[5:7] == ["generate"] * 2
