"""What a model is shown of a cell's result: ANSI stripped, tracebacks condensed, long output cut."""

from __future__ import annotations

from sandbox.result import (
    DisplayOutput,
    ExecutionError,
    ExecutionResult,
    ExecutionStatus,
    ImageRef,
    strip_ansi,
    truncate_middle,
)

IPYTHON_TRACEBACK = [
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
    "\x1b[0;31mNameError\x1b[0m                                 Traceback (most recent call last)",
    "Cell In[3], line 2\n\x1b[1;32m      1\x1b[0m a = 1\n\x1b[0;32m----> 2\x1b[0m b = a + c\n",
    "\x1b[0;31mNameError\x1b[0m: name 'c' is not defined",
]


def test_ansi_codes_are_stripped() -> None:
    assert strip_ansi(IPYTHON_TRACEBACK[1]).startswith("NameError   ")
    assert strip_ansi("\x1b[1;32mok\x1b[0m\x1b]") == "ok"


def test_a_traceback_is_condensed_to_the_last_frame_and_the_error_line() -> None:
    error = ExecutionError(
        ename="NameError",
        evalue="name 'c' is not defined",
        traceback=[strip_ansi(t) for t in IPYTHON_TRACEBACK],
    )
    assert error.condensed() == "Cell In[3], line 2\n----> 2 b = a + c\nNameError: name 'c' is not defined"
    assert ExecutionError(ename="KeyboardInterrupt", evalue="").condensed() == "KeyboardInterrupt"


def test_long_output_keeps_head_and_tail_with_a_marker() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    cut = truncate_middle(text, 100)
    assert cut.startswith("line 0\nline 1\n") and cut.endswith("line 998\nline 999\n")
    assert f"[{len(text) - 100} characters truncated]" in cut
    assert truncate_middle("short", 100) == "short"


def test_prompt_text_orders_output_and_names_images_without_inlining_them() -> None:
    result = ExecutionResult(
        status=ExecutionStatus.ERROR,
        stdout="\x1b[1mcomputing\x1b[0m\n",
        outputs=[
            DisplayOutput(
                text="<Figure size 640x480>",
                images=[ImageRef(mime="image/png", size_bytes=2048, sha256="ab", data_b64="iVBORw0KGgo=")],
            ),
        ],
        error=ExecutionError(
            ename="ValueError",
            evalue="bad",
            traceback=[
                "---",
                "ValueError   Traceback",
                "Cell In[1], line 1\n----> 1 f()\n",
                "ValueError: bad",
            ],
        ),
    )
    assert result.prompt_text() == (
        "computing\n<Figure size 640x480>\n<image image/png, 2048 bytes>\nCell In[1], line 1\n----> 1 f()\nValueError: bad"
    )
    assert "iVBOR" not in result.prompt_text()
    assert result.model_dump()["outputs"][0]["images"][0]["data_b64"] == "iVBORw0KGgo="  # kept for callers
