"""One problem's trace as a Jupyter notebook (and HTML), so a person can read it and re-run it.

This module owns the trace → notebook mapping behind ``mathcoder export RUN ID --ipynb [--html]``:

* a first markdown cell with the problem, the reference, the sample's answer and its grade;
* each text block becomes a markdown cell, each code block a code cell numbered 1, 2, ... in order
  (the order the sandbox ran them); a code block with no output block after it never ran and has
  no execution count;
* an output block becomes the outputs of the code cell before it.  Output text is what the model
  was shown (``ExecutionResult.prompt_text``: stdout, values and errors mixed, possibly cut), so:
  ``ok`` (or unknown status) → one ``stdout`` stream; ``error`` → the text before the traceback as a
  ``stdout`` stream plus an ``error`` output whose ``ename``/``evalue`` are read from the condensed
  error line (``NameError: name 'x' is not defined``), or a ``stderr`` stream when no such line is
  found; ``timeout``/``killed``/``crashed`` → a ``stderr`` stream (the sandbox's note).

HTML goes through nbconvert's ``HTMLExporter`` (works offline: its templates ship in the wheel).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import nbformat
from nbformat import NotebookNode, v4

from benchmarks.records import ProblemRecord
from benchmarks.summary import load_run
from runtime.trace import CodeBlock, ExecutionStatus, OutputBlock, TextBlock

# nbformat's constructors are untyped; these are their typed views.
new_code_cell = cast(Callable[..., NotebookNode], v4.new_code_cell)
new_markdown_cell = cast(Callable[..., NotebookNode], v4.new_markdown_cell)
new_notebook = cast(Callable[..., NotebookNode], v4.new_notebook)
new_output = cast(Callable[..., NotebookNode], v4.new_output)
_write_notebook = cast(Callable[[NotebookNode, str], None], nbformat.write)

_ERROR_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Iteration|Warning))(?:: ?(.*))?$"
)
_TRACEBACK_LINE = ("---->", "Cell In", "File ")


class ExportError(ValueError):
    """The problem id or the sample index is not in the run."""


def _with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def block_outputs(block: OutputBlock) -> list[NotebookNode]:
    """The notebook outputs for one output block (see the module docstring)."""
    text = block.output
    if not text:
        return []
    if block.status in (ExecutionStatus.TIMEOUT, ExecutionStatus.KILLED, ExecutionStatus.CRASHED):
        return [new_output("stream", name="stderr", text=_with_newline(text))]
    if block.status != ExecutionStatus.ERROR:
        return [new_output("stream", name="stdout", text=_with_newline(text))]
    lines = text.rstrip("\n").split("\n")
    for i in range(len(lines) - 1, -1, -1):
        match = _ERROR_LINE.match(lines[i].strip())
        if match is None:
            continue
        start = i
        while start > 0 and lines[start - 1].lstrip().startswith(_TRACEBACK_LINE):
            start -= 1
        outputs: list[NotebookNode] = []
        if start:
            outputs.append(new_output("stream", name="stdout", text="\n".join(lines[:start]) + "\n"))
        traceback = lines[start : len(lines)]
        outputs.append(new_output("error", ename=match[1], evalue=match[2] or "", traceback=traceback))
        return outputs
    return [new_output("stream", name="stderr", text=_with_newline(text))]


def _header(record: ProblemRecord, sample: int) -> str:
    chosen = record.samples[sample]
    trace = chosen.trace
    lines = [
        f"# {record.id} ({record.dataset}/{record.split})",
        "",
        record.question,
        "",
        f"- **Reference:** {record.reference}",
        f"- **Answer (sample {sample} of {len(record.samples)}):** {chosen.answer}",
        f"- **Grade:** {'correct' if chosen.correct else 'incorrect'}",
    ]
    if len(record.samples) > 1:
        lines.append(f"- **Voted answer:** {record.answer} ({'correct' if record.correct else 'incorrect'})")
    if trace is not None:
        meta = trace.metadata
        lines.append(f"- **Model:** {meta.model or 'unknown'}; stop reason: {meta.stop_reason or 'unknown'}")
    if chosen.error:
        lines.append(f"- **Error:** {chosen.error}")
    return "\n".join(lines)


def trace_notebook(record: ProblemRecord, sample: int = 0) -> NotebookNode:
    """The notebook for sample ``sample`` of ``record`` (a header only when it has no trace)."""
    if not 0 <= sample < len(record.samples):
        raise ExportError(f"sample {sample} out of range: {record.id} has {len(record.samples)} sample(s)")
    cells: list[NotebookNode] = [new_markdown_cell(_header(record, sample))]
    trace = record.samples[sample].trace
    count = 0
    if trace is not None:
        for i, block in enumerate(trace.blocks):
            if isinstance(block, TextBlock):
                cells.append(new_markdown_cell(block.text))
            elif isinstance(block, CodeBlock):
                ran = i + 1 < len(trace.blocks) and isinstance(trace.blocks[i + 1], OutputBlock)
                count += 1 if ran else 0
                cells.append(new_code_cell(block.code, execution_count=count if ran else None))
            else:
                cells[-1].outputs = block_outputs(block)
    notebook = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "mathcoder": {"id": record.id, "dataset": record.dataset, "sample": sample},
        },
    )
    nbformat.validate(notebook)
    return notebook


def notebook_html(notebook: NotebookNode) -> str:
    """Render a notebook as a standalone HTML page with nbconvert."""
    from nbconvert import HTMLExporter

    exporter: Any = cast(Callable[[], Any], HTMLExporter)()
    body, _ = exporter.from_notebook_node(notebook)
    return str(body)


def export_problem(
    run_dir: str | Path,
    problem_id: str,
    *,
    sample: int = 0,
    out: str | Path | None = None,
    ipynb: bool = True,
    html: bool = False,
) -> list[Path]:
    """Write ``<id>[-s<sample>].ipynb`` (or ``out``) and/or its ``.html`` twin; returns the files written.

    Without ``out`` the files go into ``run_dir``.  ``ipynb=False, html=True`` writes the HTML only.
    """
    if not ipynb and not html:
        raise ExportError("nothing to write: ask for --ipynb, --html or both")
    _, records = load_run(run_dir)
    by_id = {r.id: r for r in records}
    if problem_id not in by_id:
        near = [i for i in by_id if problem_id in i][:5] or list(by_id)[:5]
        raise ExportError(
            f"no problem {problem_id!r} in {run_dir} ({len(by_id)} problems; e.g. {', '.join(near)})"
        )
    notebook = trace_notebook(by_id[problem_id], sample)
    suffix = f"-s{sample}" if sample else ""
    path = Path(out) if out is not None else Path(run_dir) / f"{problem_id}{suffix}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if ipynb:
        _write_notebook(notebook, str(path))
        written.append(path)
    if html:
        html_path = path.with_suffix(".html")
        html_path.write_text(notebook_html(notebook), encoding="utf-8")
        written.append(html_path)
    return written
