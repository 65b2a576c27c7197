"""Issue #18's fault scripts in a short form, so their guarantees stay true: the chaos run of the
harness (``benchmarks/chaos_run.py``) and the server soak (``benchmarks/server_soak.py``), each a
child process exactly as a user runs it, with real kernels and faults injected from outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.settings import SandboxSettings

ENV = {**os.environ, "MATHCODER_SANDBOX_RUN_DIR": str(SandboxSettings().run_dir / "test-faults")}
ROOT = os.geteuid() == 0


def run_script(module: str, *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def test_a_short_chaos_run_ends_with_the_clean_runs_records_and_nothing_left(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    done = run_script(
        "benchmarks.chaos_run", "--problems", "40", "--concurrency", "8", "--kill-every-s", "0.4",
        "--harness-kills", "1", "--uid-base", "65500", "--work", str(tmp_path / "work"), "--out", str(out),
        timeout=420,
    )  # fmt: skip
    document = json.loads(out.read_text()) if out.exists() else {}
    assert done.returncode == 0, (document.get("results", {}).get("checks"), done.stderr[-3000:])
    result = document["results"]
    assert all(result["checks"].values()) and result["faults"]["harness_kills"] == 1
    assert result["faults"]["disk_full"] == (1 if ROOT else 0)
    assert result["faults"]["engine_failures"] > 0  # the engine's 5% failures happened, and were absorbed


def test_a_short_soak_gets_no_5xx_and_leaves_no_kernel(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = run_script(
        "benchmarks.server_soak", "--minutes", "0.75", "--solve-clients", "8", "--session-clients", "4",
        "--kill-every-s", "0.5", "--sample-s", "5", "--port", "18975", "--uid-base", "66500",
        "--out", str(out), timeout=300,
    )  # fmt: skip
    document = json.loads(out.read_text()) if out.exists() else {}
    result = document.get("results", {})
    checks = result.get("checks", {})
    # Growth over 45 s says little; the full soak (10 minutes) judges it.  Everything else must hold.
    for check in [c for c in checks if not c.startswith(("RSS flat", "fds flat"))]:
        assert checks[check], (check, result.get("bad_examples"), done.stderr[-2000:])
    assert result["kernel_kills"] > 0 and result["outcomes"].get("ok", 0) > 20


pytestmark = pytest.mark.skipif(not ROOT, reason="the fault scripts need the production sandbox (root)")
