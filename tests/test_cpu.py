"""runtime.cpu: huge-page allocations for training take effect only when set before torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cpu import transparent_huge_pages

# A child process: the setting is read once per process, at torch's first allocation.
PROBE = """
import json, sys
from runtime.cpu import prefer_huge_page_allocations
if sys.argv[1] == "torch-first":
    import torch
on = prefer_huge_page_allocations()
import torch
x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB: over PyTorch's 2 MB huge-page threshold
huge_kb = sum(int(line.split()[1]) for line in open("/proc/self/smaps") if line.startswith("AnonHugePages"))
print(json.dumps({"on": on, "huge_kb": huge_kb}))
"""


def _probe(order: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, order], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(
    transparent_huge_pages() not in ("always", "madvise"), reason="transparent huge pages are off here"
)
def test_huge_pages_back_large_tensors_when_asked_before_torch() -> None:
    before = _probe("prefer-first")
    assert before["on"] is True
    assert isinstance(before["huge_kb"], int) and before["huge_kb"] >= 2048


def test_too_late_once_torch_is_imported() -> None:
    after = _probe("torch-first")
    assert after["on"] is False


def test_transparent_huge_pages_reads_the_chosen_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.cpu

    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(runtime.cpu, "THP_SETTING", setting)
    assert transparent_huge_pages() == "madvise"
    monkeypatch.setattr(runtime.cpu, "THP_SETTING", tmp_path / "missing")
    assert transparent_huge_pages() == "unknown"
