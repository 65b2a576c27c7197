"""The generation modes by name: what each runs per seed and whether it needs a teacher model.

Modes are looked up by name (and imported only when chosen) so that a Ray worker can rebuild the
same mode from a string.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from benchmarks.records import Problem
from training.generate.context import GenContext
from training.generate.records import SeedOutcome

ModeFn = Callable[[Problem, GenContext], Awaitable[SeedOutcome]]


@dataclass(frozen=True)
class ModeSpec:
    name: str
    target: str  # "module:function"
    teacher: bool  # needs a backend
    help: str

    def load(self) -> ModeFn:
        module, _, attr = self.target.partition(":")
        fn: ModeFn = getattr(importlib.import_module(module), attr)
        return fn


MODES: dict[str, ModeSpec] = {
    m.name: m
    for m in (
        ModeSpec(
            "gsm8k-calc",
            "training.generate.gsm8k_calc:generate",
            False,
            "GSM8K calculator annotations -> executed, validated code cells (teacher-free)",
        ),
        ModeSpec(
            "gsm8k-text",
            "training.generate.gsm8k_calc:generate_text",
            False,
            "GSM8K solutions as prose only (the text-only control)",
        ),
        ModeSpec(
            "backward",
            "training.generate.backward:generate",
            False,
            "MetaMath FOBAR backward questions solved with sympy (self-verification with a teacher)",
        ),
        ModeSpec(
            "teacher",
            "training.generate.teacher:generate",
            True,
            "rejection sampling: k trajectories per seed, keep the correct, distinct ones",
        ),
        ModeSpec(
            "self-train",
            "training.generate.teacher:generate",
            True,
            "rejection sampling from the model being trained; merge with its data",
        ),
        ModeSpec(
            "rephrase",
            "training.generate.rephrase:generate",
            True,
            "MetaMath rephrased questions, solved by the teacher, kept when correct",
        ),
        ModeSpec(
            "concept-graph",
            "training.generate.concept_graph:generate",
            True,
            "MathScale: concepts -> co-occurrence graph -> random walks -> new questions",
        ),
    )
}


def get_mode(name: str) -> ModeSpec:
    try:
        return MODES[name]
    except KeyError:
        raise KeyError(f"unknown generation mode {name!r}; choose one of {', '.join(MODES)}") from None
