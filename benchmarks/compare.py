"""Comparing two run folders problem by problem: wins, losses, McNemar's test, what changed.

This module owns the paired comparison behind ``mathcoder bench compare A B``.  Problems are
matched by id; ids present in only one run are counted and listed, never compared.  A problem is
*changed* when its grade (``ProblemRecord.correct``, maj@k) differs between the runs — a *win*
for B when only B is right, a *loss* when only A is.

McNemar's test asks whether the wins and losses are more lopsided than chance (H0: a discordant
problem is equally likely to go either way).  With ``n = wins + losses`` discordant problems:

* ``n < EXACT_BELOW`` (25): the exact two-sided binomial test,
  ``p = min(1, 2 · P[X ≤ min(wins, losses)])`` for ``X ~ Binomial(n, 1/2)``;
* otherwise the chi-square test with continuity correction,
  ``χ² = (|wins − losses| − 1)² / n`` on one degree of freedom, ``p = erfc(√(χ²/2))``;
* ``n = 0``: nothing to test, ``p = 1``.

Both are closed forms computed with :mod:`math` (``math.comb``, ``math.erfc``), which give the
same numbers as ``scipy.stats.binomtest`` and ``scipy.stats.chi2.sf`` (the tests check this when
SciPy is installed), so SciPy is not a dependency.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from benchmarks.summary import load_run

EXACT_BELOW = 25
"""Discordant counts below this use the exact binomial test; at or above, chi-square with correction."""


class McNemar(BaseModel):
    wins: int = Field(description="Problems only B gets right.")
    losses: int = Field(description="Problems only A gets right.")
    method: Literal["exact", "chi2_cc", "none"]
    statistic: float | None = Field(description="χ² with continuity correction (chi2_cc only).")
    p_value: float


class ChangedProblem(BaseModel):
    id: str
    question: str = Field(description="The first 120 characters of the question.")
    reference: str
    a_answer: str | None
    b_answer: str | None
    a_correct: bool
    b_correct: bool


class RunComparison(BaseModel):
    run_a: str
    run_b: str
    matched: int
    only_a: list[str] = Field(description="Ids in A only (not compared).")
    only_b: list[str] = Field(description="Ids in B only (not compared).")
    both_correct: int
    both_wrong: int
    accuracy_a: float = Field(description="A's accuracy on the matched problems.")
    accuracy_b: float = Field(description="B's accuracy on the matched problems.")
    mcnemar: McNemar
    changed: list[ChangedProblem]


def mcnemar(wins: int, losses: int) -> McNemar:
    """McNemar's test on the discordant counts (see the module docstring for the method choice)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be non-negative, got wins={wins}, losses={losses}")
    n = wins + losses
    if n == 0:
        return McNemar(wins=wins, losses=losses, method="none", statistic=None, p_value=1.0)
    if n < EXACT_BELOW:
        tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
        return McNemar(
            wins=wins, losses=losses, method="exact", statistic=None, p_value=min(1.0, 2 * tail / 2**n)
        )
    statistic = (abs(wins - losses) - 1) ** 2 / n
    return McNemar(
        wins=wins,
        losses=losses,
        method="chi2_cc",
        statistic=statistic,
        p_value=math.erfc(math.sqrt(statistic / 2)),
    )


def compare_runs(run_a: str | Path, run_b: str | Path) -> RunComparison:
    """Pair the problems of two run folders by id and compare their grades."""
    _, records_a = load_run(run_a)
    _, records_b = load_run(run_b)
    by_id_a = {r.id: r for r in records_a}
    by_id_b = {r.id: r for r in records_b}
    matched = [i for i in by_id_a if i in by_id_b]
    changed: list[ChangedProblem] = []
    both_correct = both_wrong = wins = losses = 0
    for problem_id in matched:
        a, b = by_id_a[problem_id], by_id_b[problem_id]
        if a.correct and b.correct:
            both_correct += 1
        elif not a.correct and not b.correct:
            both_wrong += 1
        else:
            wins += b.correct
            losses += a.correct
            changed.append(
                ChangedProblem(
                    id=problem_id,
                    question=" ".join(a.question.split())[:120],
                    reference=a.reference,
                    a_answer=a.answer,
                    b_answer=b.answer,
                    a_correct=a.correct,
                    b_correct=b.correct,
                )
            )
    n = len(matched)
    return RunComparison(
        run_a=str(run_a),
        run_b=str(run_b),
        matched=n,
        only_a=sorted(set(by_id_a) - set(by_id_b)),
        only_b=sorted(set(by_id_b) - set(by_id_a)),
        both_correct=both_correct,
        both_wrong=both_wrong,
        accuracy_a=(both_correct + losses) / n if n else 0.0,
        accuracy_b=(both_correct + wins) / n if n else 0.0,
        mcnemar=mcnemar(wins, losses),
        changed=changed,
    )


def print_comparison(result: RunComparison, console: Console | None = None, *, max_changed: int = 50) -> None:
    """Print the summary and the changed problems as rich tables."""
    console = console or Console()
    m = result.mcnemar
    summary = Table(title=f"A = {result.run_a}\nB = {result.run_b}")
    summary.add_column("matched problems")
    summary.add_column(str(result.matched), justify="right")
    for name, value in (
        ("accuracy A", f"{result.accuracy_a:.2%}"),
        ("accuracy B", f"{result.accuracy_b:.2%}"),
        ("B wins (only B right)", str(m.wins)),
        ("B losses (only A right)", str(m.losses)),
        ("both right / both wrong", f"{result.both_correct} / {result.both_wrong}"),
        (f"McNemar p ({m.method})", f"{m.p_value:.4g}"),
    ):
        summary.add_row(name, value)
    console.print(summary)
    if result.only_a or result.only_b:
        console.print(
            f"not compared: {len(result.only_a)} id(s) only in A, {len(result.only_b)} id(s) only in B",
            style="yellow",
        )
    if not result.changed:
        return
    changed = Table(title=f"Changed problems ({len(result.changed)})")
    for column in ("id", "question", "A", "B", "reference"):
        changed.add_column(column, overflow="fold")
    for row in result.changed[:max_changed]:
        changed.add_row(
            row.id,
            row.question,
            f"{'✓' if row.a_correct else '✗'} {row.a_answer}",
            f"{'✓' if row.b_correct else '✗'} {row.b_answer}",
            row.reference,
        )
    console.print(changed)
    if len(result.changed) > max_changed:
        console.print(f"... {len(result.changed) - max_changed} more (use --json for all)")
