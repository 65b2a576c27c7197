"""What every benchmark script writes: a printed table, a JSON file, and a one-line JSON summary.

Each result is stamped with the git commit, the machine and the Python version, so a number can
be traced to the code and the host that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
"""The CPU features that change our numbers: llama.cpp's kernels and torch's bf16 path (AMX too)."""


def cpu_description() -> str:
    """The CPU model and the ISA features of ``ISA_FLAGS`` it has, e.g. "AMD EPYC 9B14 (avx2, avx512f)"."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return f"{model} ({', '.join(f for f in ISA_FLAGS if f in flags)})" if flags else model


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {
        "commit": commit + ("-dirty" if dirty else ""),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu": cpu_description(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))
    Console().print(table)


def write_results(path: Path, name: str, results: dict[str, Any], summary: dict[str, Any]) -> None:
    """Write ``results`` (plus the environment) to ``path`` and print the one-line summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": name, "environment": environment(), "summary": summary, "results": results}
    path.write_text(json.dumps(document, indent=2))
    print(json.dumps({"benchmark": name, **summary}))
