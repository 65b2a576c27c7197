r"""Curated prediction/reference pairs for :func:`runtime.grading.is_equivalent`.

Every reference is a real MATH test answer (``math/test.jsonl`` field ``answer``, checked by a test); the
predictions are forms a model plausibly writes for it. ``equal`` is the intended verdict under the policy
in :mod:`runtime.grading`'s docstring, in particular:

* percent: ``44\%`` equals both ``44`` and ``0.44`` (math-verify's rule; models drop or convert the sign);
* degrees are a unit, not a conversion: ``45^\circ`` equals ``45`` but not ``\frac{\pi}{4}``;
* a decimal equals a repeating fraction within a relative 1e-6 (``0.333333`` is ``\frac13``, ``0.333`` is
  not), two terminating numbers only up to float noise (``16386.17`` is not ``16386.16``), and a decimal
  for an irrational answer must agree to 6 decimal places (math-verify; ``28.27`` is not ``9\pi``);
* ordered pairs and intervals keep order and endpoint type; an unbracketed list is a set.
"""

from __future__ import annotations

from typing import NamedTuple


class Pair(NamedTuple):
    pred: str
    ref: str
    equal: bool
    why: str


PAIRS: list[Pair] = [
    # --- fractions: \dfrac, \tfrac, short forms, signs, mixed numbers
    Pair(r"\frac{9}{7}", r"\dfrac{9}{7}", True, "dfrac is frac"),
    Pair(r"-\frac43", r"-\dfrac{4}{3}", True, "short frac, sign outside"),
    Pair(r"\frac{-4}{3}", r"-\dfrac{4}{3}", True, "sign inside the numerator"),
    Pair(r"\frac{1}{2}", r"\frac12", True, "short frac"),
    Pair(r"0.5", r"\frac12", True, "decimal vs fraction, exact"),
    Pair(r"1/2", r"\frac{1}{2}", True, "slash fraction"),
    Pair(r"0.3333333333333333", r"\frac13", True, "float print of 1/3"),
    Pair(r"0.333333", r"\frac{1}{3}", True, "six decimals is within 1e-6 relative"),
    Pair(r"\frac{31}{5}", r"6\frac15", True, "mixed number as improper fraction"),
    Pair(r"6.2", r"6\frac15", True, "mixed number as decimal"),
    Pair(r"137.5", r"137 \frac{1}{2}", True, "mixed number with a space"),
    Pair(r"0.35625", r".35625", True, "leading zero"),
    Pair(r"\frac{12}{5525}", r"\frac{12}{5,\!525}", True, "thousands separator inside a fraction"),
    Pair(r"2.5", r"\frac{5}{2}", True, "decimal vs fraction"),
    Pair(r"\frac{1}{3}", r"\frac{1}{2}", False, "near miss"),
    Pair(r"\frac{9}{7}", r"-\dfrac{4}{3}", False, "different value"),
    Pair(r"\frac{4}{3}", r"-\dfrac{4}{3}", False, "lost sign"),
    Pair(r"0.333", r"\frac13", False, "too coarse a decimal"),
    Pair(r"0.30000000000000004", r"\dfrac{3}{10}", True, "float print noise"),
    Pair(r"6\frac16", r"6\frac15", False, "mixed number near miss"),
    Pair(r"0.3562", r".35625", False, "truncated decimal"),
    Pair(r"\frac{12}{525}", r"\frac{12}{5,\!525}", False, "dropped digit"),
    # --- radicals and pi
    Pair(r"\frac{1}{2}\sqrt{3}", r"\frac{\sqrt{3}}{2}", True, "coefficient written in front"),
    Pair(r"\frac{\sqrt{3}}{2}", r"-\frac{\sqrt{3}}{2}", False, "lost sign"),
    Pair(r"\frac{\sqrt{6}}{3}", r"\frac{\sqrt6}3", True, "braces omitted"),
    Pair(r"\frac{1}{\sqrt2}", r"\frac{\sqrt{2}}{2}", True, "unrationalised denominator"),
    Pair(r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}{3}", False, "wrong denominator"),
    Pair(r"4\sqrt{2}+3", r"3+4\sqrt2", True, "reordered sum"),
    Pair(r"3-4\sqrt{2}", r"3+4\sqrt2", False, "sign flipped"),
    Pair(r"\sqrt{18}", r"3\sqrt{2}", True, "unsimplified radical"),
    Pair(r"\sqrt{20}", r"3\sqrt{2}", False, "different radical"),
    Pair(r"\sqrt{33}", r"\!\sqrt{33}", True, "negative thin space"),
    Pair(r"2250 \pi", r"2250\pi", True, "spacing"),
    Pair(r"4.5\pi", r"\frac{9\pi}{2}", True, "decimal coefficient of pi"),
    Pair(r"\pi/4", r"\frac{\pi}{4}", True, "slash form"),
    Pair(r"14\pi", r"14 \pi", True, "spacing"),
    Pair(r"28.27", r"9\pi", False, "decimal approximation of an irrational answer"),
    Pair(r"9", r"9\pi", False, "dropped pi"),
    Pair(r"\frac{3\pi}{4}", r"\frac{3}{4}\pi\text{ inches}", True, "unit in text"),
    # --- intervals, unions, tuples
    Pair(r"[0, \infty)", r"[0,\infty)", True, "spacing"),
    Pair(r"(0, \infty)", r"[0,\infty)", False, "open vs closed endpoint"),
    Pair(r"[1,2)", r"(1,2)", False, "closed vs open endpoint"),
    Pair(r"(1, 2)", r"(1,2)", True, "spacing"),
    Pair(r"(2,1)", r"(1,2)", False, "order of a pair matters"),
    Pair(r"[0,1]", r"[0,1)", False, "closed vs half-open"),
    Pair(r"\left[-3, 2\right]", r"[-3,2]", True, "left/right delimiters"),
    Pair(r"(-\infty, 0]", r"(-\infty,0]", True, "spacing"),
    Pair(r"(-\infty, 0)", r"(-\infty,0]", False, "open vs closed at 0"),
    Pair(r"(-\infty,-8)\cup(8,\infty)", r"(-\infty,-8)\cup (8,\infty)", True, "union, spacing"),
    Pair(r"(-\infty,-8]\cup[8,\infty)", r"(-\infty,-8)\cup (8,\infty)", False, "union, closed endpoints"),
    Pair(r"(-1.732, 1.732)", r"(-\sqrt{3}, \sqrt{3})", False, "rough decimal endpoints for sqrt(3)"),
    Pair(r"(-1.7320508, 1.7320508)", r"(-\sqrt{3}, \sqrt{3})", True, "endpoints right to 6 places"),
    Pair(r"\left(-\sqrt{3},\sqrt{3}\right)", r"(-\sqrt{3}, \sqrt{3})", True, "left/right, spacing"),
    Pair(r"(\frac43, -\frac13)", r"\left( \frac{4}{3}, -\frac{1}{3} \right)", True, "point, short fracs"),
    Pair(r"(\frac43, \frac13)", r"\left( \frac{4}{3}, -\frac{1}{3} \right)", False, "point, lost sign"),
    Pair(r"\left(4, 5\right)", r"(4,5)", True, "left/right"),
    Pair(r"(60, -88, 25, 4)", r"(60,-88,25,4)", True, "4-tuple, spacing"),
    Pair(r"(60, 88, 25, 4)", r"(60,-88,25,4)", False, "4-tuple, one sign"),
    # --- matrices and vectors
    Pair(
        r"\begin{pmatrix}6\\3\\0\end{pmatrix}", r"\begin{pmatrix} 6 \\ 3 \\ 0 \end{pmatrix}", True, "spacing"
    ),
    Pair(
        r"\begin{pmatrix} 0.2 & 0.8 \\ 0 & 1 \end{pmatrix}",
        r"\begin{pmatrix} 1/5 & 4/5 \\ 0 & 1 \end{pmatrix}",
        True,
        "decimal entries",
    ),
    Pair(
        r"\begin{pmatrix} 1 & 4 & 3 \end{pmatrix}",
        r"\begin{pmatrix} 1 \\ 4 \\ 3 \end{pmatrix}",
        False,
        "row vs column vector",
    ),
    Pair(
        r"\begin{pmatrix} 2 & 0 \\ 3 & 5 \end{pmatrix}",
        r"\begin{pmatrix} 2 & 0 \\ -3 & 5 \end{pmatrix}",
        False,
        "one entry's sign",
    ),
    Pair(
        r"\begin{bmatrix} 2 & 0 \\ -3 & 5 \end{bmatrix}",
        r"\begin{pmatrix} 2 & 0 \\ -3 & 5 \end{pmatrix}",
        True,
        "bmatrix vs pmatrix",
    ),
    # --- degrees (a unit, not converted)
    Pair(r"39", r"39^\circ", True, "degree sign dropped"),
    Pair(r"45^{\circ}", r"45^\circ", True, "braced circ"),
    Pair(r"180", r"180^{\circ}", True, "degree sign dropped"),
    Pair(r"\frac{\pi}{4}", r"45^\circ", False, "policy: radians are not degrees"),
    Pair(r"40^\circ", r"39^\circ", False, "near miss"),
    # --- percent
    Pair(r"44", r"44\%", True, "policy: percent sign dropped"),
    Pair(r"0.44", r"44\%", True, "policy: percent as a fraction"),
    Pair(r"0.072", r"7.2\%", True, "policy: percent as a fraction"),
    Pair(r"45\%", r"44\%", False, "near miss"),
    Pair(r"0.45", r"44\%", False, "near miss as a fraction"),
    # --- money, units, thousands separators
    Pair(r"15000", r"\$15,\!000", True, "dollar sign and thousands separator"),
    Pair(r"\$15,000", r"\$15,\!000", True, "plain thousands separator"),
    Pair(r"1500", r"\$15,\!000", False, "off by ten"),
    Pair(r"16386.16", r"\$16,\!386.16", True, "dollars and cents"),
    Pair(r"16386.17", r"\$16,\!386.16", False, "one cent off"),
    Pair(r"-0.5", r"-\$0.50", True, "negative money"),
    Pair(r"0.5", r"-\$0.50", False, "lost sign"),
    Pair(r"18.9", r"\$18.90", True, "trailing zero"),
    Pair(r"118", r"118 \text{ dollars}", True, "unit in text"),
    Pair(r"\$118", r"118 \text{ dollars}", True, "dollar sign vs unit"),
    Pair(r"575 students", r"575\text{ students}", True, "plain unit word"),
    Pair(r"440", r"440\text{ cm}^2", True, "squared unit"),
    Pair(r"864\text{ in}^2", r"864 \mbox{ inches}^2", True, "mbox unit"),
    Pair(r"32760", r"32,\!760", True, "thin-space thousands separator"),
    Pair(r"32761", r"32,\!760", False, "near miss"),
    Pair(r"371043400.0", r"371,\!043,\!400", True, "trailing .0"),
    Pair(r"1000000", r"1,\!000,\!000", True, "million"),
    Pair(r"100000", r"1,\!000,\!000", False, "dropped zero"),
    Pair(r"\frac{68}{3}", r"\frac{68}{3}\text{ pounds}", True, "unit after a fraction"),
    Pair(r"\frac{86}{3}", r"\frac{68}{3}\text{ pounds}", False, "swapped digits"),
    # --- multiple choice and words
    Pair(r"C", r"\text{(C)}", True, "bare letter"),
    Pair(r"(C)", r"\text{(C)}", True, "parenthesised letter"),
    Pair(r"\text{C}", r"\text{(C)}", True, "text letter"),
    Pair(r"D", r"\text{(C)}", False, "wrong choice"),
    Pair(r"\text{(B)}", r"\text{(A)}", False, "wrong choice"),
    Pair(r"Evelyn", r"\text{Evelyn}", True, "bare word"),
    Pair(r"\text{Saturday}", r"\mbox{Saturday}", True, "text vs mbox"),
    Pair(r"\text{Sunday}", r"\mbox{Saturday}", False, "wrong day"),
    Pair(r"\text{June 21}", r"\text{June 20}", False, "wrong date"),
    # --- expressions and equations
    Pair(r"(x+5)^2", r"x^2 + 10x + 25", True, "factored form"),
    Pair(r"(x+5)^3", r"x^2 + 10x + 25", False, "different polynomial"),
    Pair(r"20-2x", r"-2x + 20", True, "reordered"),
    Pair(r"2x-20", r"-2x + 20", False, "negated"),
    Pair(r"x=-1", r"x = -1", True, "spacing"),
    Pair(r"-1", r"x = -1", True, "value of the variable"),
    Pair(r"x = 1", r"x = -1", False, "lost sign"),
    Pair(r"y=-\frac12x^2+4x-6", r"y = -\frac{1}{2} x^2 + 4x - 6", True, "equation, short frac"),
    Pair(r"y = 2x+1", r"y = 2x", False, "different line"),
    Pair(r"1+2i", r"1+2i", True, "identical complex number"),
    Pair(r"2i+1", r"1+2i", True, "reordered complex number"),
    Pair(r"1-2i", r"1+2i", False, "conjugate"),
    # --- sets, lists and plus-minus
    Pair(
        r"0.2, 0.25, 0.4, 0.5",
        r"\frac{1}{5}, \frac{1}{4}, \frac{2}{5}, \frac{1}{2}",
        True,
        "list as decimals",
    ),
    Pair(r"0.2, 0.25, 0.4", r"\frac{1}{5}, \frac{1}{4}, \frac{2}{5}, \frac{1}{2}", False, "list missing one"),
    Pair(r"93, 27", r"27,93", True, "unordered list"),
    Pair(r"1+\sqrt{19}, 1-\sqrt{19}", r"1 \pm \sqrt{19}", True, "plus-minus expanded"),
    Pair(r"1+\sqrt{19}", r"1 \pm \sqrt{19}", False, "one root of two"),
    Pair(r"\{-2, 1+\sqrt5, 1-\sqrt5\}", r"\{1\pm\sqrt{5},-2\}", True, "set with plus-minus"),
    Pair(r"19, 43", r"19 \text{ and }43", True, "'and' in text"),
]
