"""The failure table (runtime/failures.py): the README shows the code's, and the retry policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.failures import check_cell, retrying, table_markdown
from sandbox.errors import KernelLost
from sandbox.result import ExecutionResult, ExecutionStatus

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_shows_the_table_the_code_decides_with() -> None:
    assert table_markdown() in README.read_text(encoding="utf-8")


def test_a_lost_kernel_raises_and_a_crash_of_the_code_does_not() -> None:
    crashed = ExecutionResult(status=ExecutionStatus.CRASHED, message="the kernel died from signal SIGSEGV")
    assert check_cell(crashed) is crashed
    with pytest.raises(KernelLost, match="from outside"):
        check_cell(crashed.model_copy(update={"lost": "killed from outside the sandbox"}))


@pytest.mark.asyncio
async def test_retrying_stops_at_the_first_success_or_after_its_retries() -> None:
    results = iter([None, None, "ok", "never"])

    async def attempt() -> str | None:
        return next(results)

    assert await retrying(attempt, lambda r: r is None, retries=2, backoff_s=0) == ("ok", 3)
    results = iter([None] * 5)
    assert await retrying(attempt, lambda r: r is None, retries=2, backoff_s=0) == (None, 3)
