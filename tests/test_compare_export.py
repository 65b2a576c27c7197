"""Comparing two runs (McNemar) and exporting a trace as a notebook that re-runs to the same outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
import typer
from typer.testing import CliRunner

from benchmarks.compare import compare_runs, mcnemar
from benchmarks.export import ExportError, export_problem, trace_notebook
from benchmarks.harness_cli import register
from benchmarks.records import ProblemRecord, RunConfig, SampleRecord
from runtime.trace import CodeBlock, OutputBlock, TextBlock, Trace


def record(pid: str, correct: bool, answer: str = "1", trace: Trace | None = None) -> ProblemRecord:
    return ProblemRecord(
        id=pid, dataset="gsm8k", split="test", question=f"Question {pid}?  It is long " + "x" * 200,
        reference="1", answer=answer, correct=correct, pass_at_k=correct,
        samples=[SampleRecord(answer=answer, correct=correct, trace=trace)], wall_time_s=1.0,
    )  # fmt: skip


def write_run(run_dir: Path, records: list[ProblemRecord]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(RunConfig(dataset="gsm8k", split="test").model_dump_json())
    (run_dir / "records.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))
    return run_dir


# -------------------------------------------------------------------------------------------- McNemar


def test_mcnemar_small_counts_use_the_exact_binomial_test() -> None:
    assert mcnemar(0, 0).method == "none" and mcnemar(0, 0).p_value == 1.0
    result = mcnemar(5, 0)
    assert result.method == "exact" and result.p_value == pytest.approx(2 / 32)
    assert mcnemar(3, 3).p_value == 1.0
    assert mcnemar(24, 0).method == "exact"
    assert mcnemar(25, 0).method == "chi2_cc"
    # hand value: (|30-10|-1)^2/40 = 9.025, p = 0.002663
    big = mcnemar(30, 10)
    assert big.statistic == pytest.approx(9.025) and big.p_value == pytest.approx(0.0026635, rel=1e-3)


@pytest.mark.parametrize("wins,losses", [(1, 0), (7, 2), (3, 11), (12, 12), (20, 4), (40, 25), (100, 70)])
def test_mcnemar_agrees_with_scipy(wins: int, losses: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    result = mcnemar(wins, losses)
    n = wins + losses
    if result.method == "exact":
        expected = stats.binomtest(wins, n, 0.5).pvalue
    else:
        expected = stats.chi2.sf((abs(wins - losses) - 1) ** 2 / n, df=1)
    assert result.p_value == pytest.approx(expected, rel=1e-9)


def test_compare_runs_counts_wins_losses_and_unmatched_ids(tmp_path: Path) -> None:
    a = write_run(
        tmp_path / "a",
        [
            record("p1", True),
            record("p2", False, "7"),
            record("p3", True),
            record("p4", False),
            record("only-a", True),
        ],
    )
    b = write_run(
        tmp_path / "b",
        [
            record("p1", True),
            record("p2", True),
            record("p3", False, "9"),
            record("p4", False),
            record("only-b", True),
        ],
    )
    result = compare_runs(a, b)
    assert result.matched == 4 and result.only_a == ["only-a"] and result.only_b == ["only-b"]
    assert (result.both_correct, result.both_wrong) == (1, 1)
    assert (result.mcnemar.wins, result.mcnemar.losses) == (1, 1)
    assert result.accuracy_a == result.accuracy_b == 0.5
    assert [(c.id, c.a_answer, c.b_answer, c.reference) for c in result.changed] == [
        ("p2", "7", "1", "1"),
        ("p3", "1", "9", "1"),
    ]
    assert len(result.changed[0].question) == 120


# --------------------------------------------------------------------------------------------- export

SIMPLE = Trace(
    problem="What is 6 * 7 plus the sum of squares below 5?",
    blocks=[
        TextBlock(text="First the product."),
        CodeBlock(code="x = 6 * 7\nprint(x)"),
        OutputBlock(output="42", status="ok"),
        CodeBlock(code="s = sum(i * i for i in range(5))\nprint(s)\nprint(x + s)"),
        OutputBlock(output="30\n72", status="ok"),
        TextBlock(text="Now a mistake."),
        CodeBlock(code="print('before')\ny = undefined_name + 1"),
        OutputBlock(
            output="before\nCell In[3], line 2\n----> 2 y = undefined_name + 1\nNameError: name 'undefined_name' is not defined",
            status="error",
        ),
        CodeBlock(code="while True: pass"),
        OutputBlock(output="Execution timed out after 5 s; the cell was interrupted.", status="timeout"),
        TextBlock(text="So the answer is \\boxed{72}."),
    ],
    final_answer="72",
)


def test_notebook_has_the_trace_cells_in_order_and_validates() -> None:
    notebook = trace_notebook(record("p1", False, "72", SIMPLE))
    nbformat.validate(notebook)
    assert [c.cell_type for c in notebook.cells] == [
        "markdown",
        "markdown",
        "code",
        "code",
        "markdown",
        "code",
        "code",
        "markdown",
    ]
    assert "Question p1" in notebook.cells[0].source and "**Grade:** incorrect" in notebook.cells[0].source
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3, 4]
    assert code[0].outputs == [{"output_type": "stream", "name": "stdout", "text": "42\n"}]
    stream, error = code[2].outputs
    assert stream["text"] == "before\n"
    assert (error["ename"], error["evalue"]) == ("NameError", "name 'undefined_name' is not defined")
    assert code[3].outputs[0]["name"] == "stderr"
    with pytest.raises(ExportError, match="sample 1 out of range"):
        trace_notebook(record("p1", False, "72", SIMPLE), sample=1)


def _texts(cell: Any) -> tuple[str, list[tuple[str, str]]]:
    text = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout")
    return text, [(o["ename"], o["evalue"]) for o in cell.outputs if o["output_type"] == "error"]


def test_reexecuting_the_notebook_reproduces_the_recorded_outputs() -> None:
    from nbclient import NotebookClient

    trace = SIMPLE.model_copy(update={"blocks": SIMPLE.blocks[:8]})  # without the endless loop
    recorded = trace_notebook(record("p1", True, "72", trace))
    rerun = nbformat.reads(nbformat.writes(recorded), as_version=4)
    NotebookClient(rerun, timeout=60, kernel_name="python3", allow_errors=True).execute()
    for old, new in zip(recorded.cells, rerun.cells, strict=True):
        if old.cell_type == "code":
            assert _texts(new) == _texts(old)


def test_export_cli_writes_notebook_and_html(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [record("p1", True, "72", SIMPLE), record("p2", True)])
    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    runner = CliRunner()

    result = runner.invoke(app, ["export", str(run), "p1", "--ipynb", "--html"])
    assert result.exit_code == 0, result.output
    notebook = nbformat.read(str(run / "p1.ipynb"), as_version=4)
    nbformat.validate(notebook)
    html = (run / "p1.html").read_text()
    assert "undefined_name" in html and "NameError" in html and "<html" in html

    out = tmp_path / "elsewhere" / "nb.ipynb"
    assert runner.invoke(app, ["export", str(run), "p2", "--out", str(out)]).exit_code == 0
    assert out.is_file()
    missing = runner.invoke(app, ["export", str(run), "p9"])
    assert missing.exit_code == 2 and "no problem 'p9'" in missing.output

    compared = runner.invoke(app, ["bench", "compare", str(run), str(run), "--json"])
    assert compared.exit_code == 0, compared.output
    assert json.loads(compared.output)["matched"] == 2
    table = runner.invoke(app, ["bench", "compare", str(run), str(run)])
    assert table.exit_code == 0 and "McNemar p (none)" in table.output
    reported = runner.invoke(app, ["bench", "report", str(run)])
    assert reported.exit_code == 0 and (run / "report.md").is_file()


def test_export_problem_needs_something_to_write(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [record("p1", True)])
    with pytest.raises(ExportError, match="nothing to write"):
        export_problem(run, "p1", ipynb=False, html=False)
    assert export_problem(run, "p1", ipynb=False, html=True) == [run / "p1.html"]
