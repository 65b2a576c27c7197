"""What a finished bench run would have scored had each trajectory answered from its own outputs by a rule.

    python -m benchmarks.answer_policies RUN_DIR [RUN_DIR ...] [--out runs/bench/answer_policies.json]

The fine-tuned default model often prints the right value in an early cell and then writes more
cells that compute something else (issue #13's mawps evaluation). This reads the records of
finished ``mathcoder bench`` folders — no model, no kernel — and grades, for each rule, the value
the rule picks against the problem's reference with the runtime's grader
(:func:`runtime.grading.is_equivalent`):

* ``model``: the answer the model gave (the run's own accuracy);
* ``first``: the last number the first cell that ran without error printed;
* ``last``: the same for the last such cell;
* ``modal``: the value those cells printed most often, as printed (``43`` and ``43.0`` are two
  values; a tie goes to the earliest printed);
* ``any``: a bound, not a rule: the reference is among those values.

The first sample of each problem only. A rule with no value (no cell ran, or none printed a number)
counts as wrong. Prints a table per run and writes the JSON (``--out``). Written here because the
question (which printed value a run should have answered with) is this project's own.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.bench_io import print_table, write_results
from benchmarks.summary import load_run
from runtime.grading import is_equivalent
from runtime.trace import OutputBlock, Trace

# A number as a cell prints it: sign, thousands commas, decimals, a fraction, an exponent.  Not
# runtime.answers.extract_answer: it reads prose answers and takes a bare output such as "[5]" or
# "{x: 5}" whole, missing the value in a Python repr (run 4's 'any' bound: 6.67% here, 3.56% with it).
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:/\d+)?")

RULES: dict[str, Callable[[list[str]], str | None]] = {
    "first": lambda values: values[0] if values else None,
    "last": lambda values: values[-1] if values else None,
    # Counter keeps first-insertion order among equal counts, so a tie goes to the earliest value.
    "modal": lambda values: Counter(values).most_common(1)[0][0] if values else None,
}


def printed_values(trace: Trace) -> list[str]:
    """The last number each cell that ran without error printed, in order (cells printing none skipped)."""
    values = []
    for block in trace.blocks:
        if isinstance(block, OutputBlock) and block.status == "ok":
            numbers = _NUMBER.findall(block.output)
            if numbers:
                values.append(numbers[-1].replace(",", ""))
    return values


@dataclass
class PolicyScores:
    """One run: problems graded, and how many each rule got right."""

    run_dir: str
    dataset: str
    problems: int
    right: dict[str, int]

    def rate(self, rule: str) -> float:
        return self.right[rule] / self.problems if self.problems else 0.0


def score_run(run_dir: Path) -> PolicyScores:
    config, records = load_run(run_dir)
    right = dict.fromkeys(["model", *RULES, "any"], 0)
    for record in records:
        sample = record.samples[0]
        right["model"] += bool(sample.correct)
        values = printed_values(sample.trace) if sample.trace is not None else []
        graded = {value: is_equivalent(value, record.reference) for value in set(values)}
        for rule, pick in RULES.items():
            chosen = pick(values)
            right[rule] += chosen is not None and graded[chosen]
        right["any"] += any(graded.values())
    return PolicyScores(str(run_dir), config.dataset, len(records), right)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/answer_policies.json"))
    args = parser.parse_args(argv)
    scores = [score_run(run_dir) for run_dir in args.run_dirs]
    columns = ["model", *RULES, "any"]
    print_table(
        "Accuracy (%) had each trajectory answered by the rule ('any': the reference was printed)",
        ["run", "dataset", "problems", *columns],
        [[Path(s.run_dir).name, s.dataset, s.problems, *(100 * s.rate(c) for c in columns)] for s in scores],
    )
    summary = {s.run_dir: {c: s.rate(c) for c in columns} for s in scores}
    write_results(args.out, "answer_policies", {"runs": [asdict(s) for s in scores]}, summary)


if __name__ == "__main__":
    main()
