"""``benchmarks/server_load.py`` in a short form: the load script itself keeps working, and under
its load the server answers every streaming request completely (no error, every stream ``done``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.procs import pids_of_uids
from sandbox.settings import SandboxSettings


def test_the_load_script_runs_short_with_no_error(tmp_path: Path) -> None:
    uid_base = 69400
    out = tmp_path / "server_load.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.server_load", "--skip-model", "--clients", "8", "--requests", "2",
         "--sequential", "10", "--port", "18960", "--uid-base", str(uid_base), "--out", str(out)],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "MATHCODER_SANDBOX_RUN_DIR": str(SandboxSettings().run_dir / "test-server-load")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["scripted_errors"] == 0 and summary["scripted_clients"] == 8
    document = json.loads(out.read_text())
    assert document["results"]["scripted"]["concurrent_server"]["requests"] == 16
    assert len(out.with_suffix(".samples.jsonl").read_text().splitlines()) >= 16 + 10
    assert pids_of_uids(range(uid_base, uid_base + 200)) == []  # no kernel left, server or direct
