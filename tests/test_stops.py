"""Stop strings over streamed text: where generation stops, and that no client sees part of one."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from runtime.backends.stops import StopHoldback, cut_at_stop, find_stop


def test_find_stop_prefers_the_match_that_completes_first() -> None:
    assert find_stop("abcdef", ["cd", "b"]) == (1, "b")
    assert find_stop("x```output\n", ["output", "```output"]) == (1, "```output")
    assert find_stop("abc", ["zz", ""]) is None
    assert cut_at_stop("print(1)\n```\nmore", ["```"]) == ("print(1)\n", "```")


def test_a_split_delimiter_is_held_back_until_it_is_known() -> None:
    holdback = StopHoldback(["```output"])
    assert holdback.feed("x = 1\n``") == ("x = 1\n", None)  # "``" may begin the delimiter
    assert holdback.feed("`out") == ("", None)
    assert holdback.feed("side") == ("```outside", None)  # it was not one after all
    assert holdback.feed(" ```output\n") == (" ", "```output")
    assert holdback.feed("after") == ("", "```output")  # nothing after the stop
    assert holdback.flush() == ""


def test_without_a_stop_the_held_tail_comes_out_at_the_end() -> None:
    holdback = StopHoldback(["</code>"])
    assert holdback.feed("a </co") == ("a ", None)
    assert holdback.flush() == "</co"


alphabet = st.sampled_from("ab`\n")
texts = st.text(alphabet, max_size=40)


@given(
    text=texts,
    stops=st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 40)),
)
def test_pieces_never_hold_a_delimiter_and_join_to_the_text_before_the_stop(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    points = sorted({c for c in cuts if c <= len(text)} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(points)]
    holdback = StopHoldback(stops)
    released: list[str] = []
    stop = None
    for piece in pieces:
        out, stop = holdback.feed(piece)
        released.append(out)
        if stop is not None:
            break
    if stop is None:
        released.append(holdback.flush())
    expected, expected_stop = cut_at_stop(text, stops)
    assert "".join(released) == expected and stop == expected_stop
    shown = ""
    for out in released:  # at no moment does what the client has seen contain a stop string
        shown += out
        assert find_stop(shown, stops) is None
