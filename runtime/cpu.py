"""What this machine's CPU computes natively, where that decides a default (bf16 or fp32).

PyTorch runs bfloat16 on any x86 CPU, but only AVX512-BF16 and AMX compute it in hardware; elsewhere
(AVX2 machines) it is emulated and slower than float32.  Training autocast (``training.trainer``)
turns bf16 on where it is native.  The transformers backend's ``auto`` dtype does too, except on
AMX CPUs: there oneDNN's bf16 matmuls give a row results that depend on its place in the batch (seen
on a Sapphire Rapids-class Xeon: two identical rows of one batch sampled different text with the
same seed, and greedy rows changed with their batch-mates; the same tests pass with oneDNN held to
AVX512-BF16, ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``, and in float32).  A served row must not depend
on who else is being served, so ``auto`` stays float32 there; ``MATHCODER_DTYPE=bfloat16`` opts in.

It also owns one allocator setting: training allocates and frees the same large tensors (activations,
logits over a 49k vocabulary) every step, and with 4 kB pages the kernel faults them in afresh each
time (a third of a LoRA step's CPU was system time on the AMX machine).  PyTorch can back its large
CPU allocations with transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``), but reads the variable once,
at its first allocation, so it must be in the environment before torch is imported.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


AMX_FLAGS = ("amx_bf16", "amx_int8", "amx_tile")


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(text.split())


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    return any(flag in _cpu_flags() for flag in NATIVE_BF16_FLAGS)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (oneDNN then runs bf16 matmuls on them; see the docstring)."""
    return any(flag in _cpu_flags() for flag in AMX_FLAGS)


def batch_invariant_bf16() -> bool:
    """Whether bf16 inference here is both native and independent of a row's batch-mates."""
    return cpu_supports_bf16() and not cpu_has_amx()


THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_pages() -> str:
    """The kernel's transparent huge page mode (always, madvise or never; "unknown" if unreadable)."""
    try:
        text = THP_SETTING.read_text(encoding="ascii")
    except OSError:
        return "unknown"
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else "unknown"


def huge_page_state() -> dict[str, str | None]:
    """What a measurement records about huge pages: PyTorch's setting and the kernel's mode."""
    return {
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "kernel": transparent_huge_pages(),
    }


def prefer_huge_page_allocations() -> bool:
    """Ask PyTorch to back its large CPU tensors with transparent huge pages (see the docstring).

    Sets ``THP_MEM_ALLOC_ENABLE=1`` unless the environment already decides; returns whether the
    setting is on and can still take effect (torch not yet imported, and huge pages not ``never``).
    Measured on a 2-core AVX512-BF16 EPYC, the recipe's LoRA bf16 step: 165-172 -> 188 tok/s.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return (
        os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
        and "torch" not in sys.modules
        and transparent_huge_pages() in ("always", "madvise")
    )
