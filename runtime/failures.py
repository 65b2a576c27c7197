"""The one table that says whether a failure is the model's outcome or the infrastructure's.

A model's outcome is graded and may become training data.  An infrastructure failure is retried
within the run (``benchmarks.run``, ``training.generate.runner``: at most ``infra_retries`` times,
with back-off) and again by a resume, reported apart, and never graded nor kept as a trace: a
sandbox or engine that fails must not read as a model that failed (scoring such failures as wrong
answers is how evaluation numbers and self-training data get poisoned).

The loop (``runtime.loop``) raises every infrastructure failure as a ``BackendError`` or a
``SandboxError`` and ends the trajectory with an ``ErrorEvent``; what the model's code did to its
own kernel is an ``ExecutionResult`` status the model reads and goes on from.  The table below is
also the README's (``tests/test_failures.py`` keeps the two the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runtime.backends.base import BackendError
from sandbox.errors import KernelLost, SandboxError
from sandbox.result import ExecutionResult

MODEL_OUTCOMES: tuple[str, ...] = (
    "the cell raised",
    "the cell hit its time limit (interrupted, or killed when deaf to the interrupt)",
    "the cell exhausted its own memory cgroup or rlimits (CPU, file size, processes)",
    "the cell exceeded the output limit",
    "the kernel died while running the cell's own code (segfault, `os._exit`, a signal it sent itself)",
)
"""Graded; may be training data.  Each is an ``ExecutionResult`` status: ok, error, timeout, killed,
crashed."""

INFRASTRUCTURE_FAILURES: tuple[str, ...] = (
    "the kernel could not start",
    "the pool was exhausted past its wait (`PoolFull`)",
    "the kernel died while idle, or was killed from outside the sandbox (a SIGKILL neither its "
    "cgroup's OOM killer nor its own code sent)",
    "the sandbox backend failed (container engine, zygote)",
    "the model backend failed after its retries (connection, 5xx, timeout)",
    "the run was shut down",
)
"""Retried, never graded, never training data.  Each reaches the loop as a ``SandboxError`` or a
``BackendError`` (a lost kernel as ``ExecutionResult.lost``, raised here as ``KernelLost``)."""

INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (BackendError, SandboxError)
"""The exception types that mean an infrastructure failure."""


def check_cell(result: ExecutionResult) -> ExecutionResult:
    """``result``, unless the sandbox lost the kernel for a reason outside the cell's code."""
    if result.lost is not None:
        raise KernelLost(result.lost)
    return result


T = TypeVar("T")


class InfrastructureFailure(RuntimeError):
    """An infrastructure failure that has been retried already (e.g. by the harness, for a sampled
    trajectory): the caller records it as such, without retrying again."""


async def retrying(
    attempt: Callable[[], Awaitable[T]], failed: Callable[[T], bool], *, retries: int, backoff_s: float
) -> tuple[T, int]:
    """Run ``attempt`` until ``failed`` says no, at most ``1 + retries`` times, waiting ``backoff_s``
    before the first retry and twice as long before each next; the last result and the attempts."""
    attempts = 1
    result = await attempt()
    while failed(result) and attempts <= retries:
        await asyncio.sleep(backoff_s * 2 ** (attempts - 1))
        attempts += 1
        result = await attempt()
    return result, attempts


def table_markdown() -> str:
    """The table as the README shows it."""
    rows = max(len(MODEL_OUTCOMES), len(INFRASTRUCTURE_FAILURES))
    model = [*MODEL_OUTCOMES, *[""] * (rows - len(MODEL_OUTCOMES))]
    infra = [*INFRASTRUCTURE_FAILURES, *[""] * (rows - len(INFRASTRUCTURE_FAILURES))]
    lines = [
        "| the model's outcome (graded, may be training data) "
        "| an infrastructure failure (retried, never graded, never training data) |",
        "|---|---|",
        *(f"| {m} | {i} |" for m, i in zip(model, infra, strict=True)),
    ]
    return "\n".join(lines) + "\n"
