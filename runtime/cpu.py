"""What this machine's CPU computes natively, where that decides a default (bf16 or fp32).

PyTorch runs bfloat16 on any x86 CPU, but only AVX512-BF16 and AMX compute it in hardware; elsewhere
(AVX2 machines) it is emulated and slower than float32.  Training autocast (``training.trainer``)
and the transformers backend's ``auto`` dtype both turn bf16 on only where it is native.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in NATIVE_BF16_FLAGS)
