"""Self-consistency (SC-TIR): sample k trajectories, vote over their answers.

Answers are grouped by the grader's equivalence, not by string (``\\frac12`` and ``0.5`` are one
vote); the largest group wins, ties go to the group whose first member came first, so a vote is
deterministic given its samples.  Grouping compares each answer with one representative per group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime.grading import is_equivalent


@dataclass(frozen=True)
class Vote:
    answer: str | None
    votes: int
    groups: tuple[tuple[str, int], ...]  # (representative, size), in order of first appearance


def majority_vote(answers: Sequence[str | None], equal: Callable[[str, str], bool] = is_equivalent) -> Vote:
    """The most common answer up to equivalence; missing answers (None) never win."""
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if equal(answer, group[0]):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return Vote(answer=None, votes=0, groups=())
    best = max(range(len(groups)), key=lambda i: (len(groups[i]), -i))
    return Vote(answer=groups[best][0], votes=len(groups[best]), groups=tuple((g[0], len(g)) for g in groups))


async def majority_vote_async(answers: Sequence[str | None]) -> Vote:
    """``majority_vote`` off the event loop (equivalence checks may take a grader worker's time)."""
    return await asyncio.to_thread(majority_vote, answers)
