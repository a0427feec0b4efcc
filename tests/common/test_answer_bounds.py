"""Size bounds on parsed answers: bombs are named before anything is evaluated, answers pass."""

from __future__ import annotations

import logging

import pytest
import sympy
from math_verify import parse

from coldstart.common.answer_bounds import too_big_reason

pytestmark = pytest.mark.timeout(120)
logging.getLogger("math_verify").setLevel(logging.ERROR)


def unevaluated(latex: str) -> list:
    """math-verify's parse tree with evaluation off, as the verifier's size check sees it."""
    with sympy.evaluate(False):
        return parse(f"${latex}$", parsing_timeout=None)


@pytest.mark.parametrize(
    ("latex", "named"),
    [
        (r"\binom{10^8}{5 \cdot 10^7}", "binomial"),
        (r"\binom{100000}{50000}", "binomial"),
        ("99999999999^{99999}", "power"),
        (r"\Gamma(10^{7})", "gamma"),
        (r"\Gamma(100000)", "gamma"),
        ("(10^9)!", "factorial"),
        ("1000000!", "factorial"),
        (r"\frac{(10^{6})!}{7}", "factorial"),
        ("9^{9^{9^{9}}}", "power"),
        ("2^{2^{2^{2^{2}}}}", "power"),
        (r"10^{10^{100}}", "power"),
        ("1.5^{999999}", "power"),
        ("10^{-5000}", "power"),
        (r"\sin(10^{500})", "sin"),
        (r"\sqrt{10^{500}+1}", "non-integer power"),
        (r"\log(10^{500}+1)", "log"),
        (r"\prod_{k=1}^{10^{6}} k", "terms"),
        (r"\sum_{k=1}^{10000} \frac{1}{k}", "terms"),
        ("(x+1)^{1000}", "symbols"),
        (r"e^{10^{9}}", "power"),
        (r"\binom{10^{8}}{k}", "binomial"),
    ],
)
def test_bombs_are_named(latex: str, named: str) -> None:
    reason = too_big_reason(unevaluated(latex))
    assert reason is not None and named in reason


@pytest.mark.parametrize(
    "latex",
    [
        r"\frac{1}{2}",
        "2^{1000}",
        "2^{2024}",
        "100!",
        r"\binom{100}{50}",
        r"\binom{10^8}{2}",  # a big n with a small k is a small number
        r"\binom{n}{2}",
        r"\binom{5!}{2}",
        r"\Gamma(5)",
        r"e^{-x^{2}}",  # a symbolic tower is fine
        "(x+1)^{2}",
        "x^{100}",
        r"\sin(\frac{\pi}{6})",
        r"\sqrt{2}",
        r"\log(10^{50})",
        "10^{-5}",
        "0",
        r"\sum_{k=1}^{10} k",
        r"\sum_{k=1}^{n} k",
        r"\{1, 2\}",
        "(1, 3]",
        "x=3",
        r"30^\circ",
        r"50\%",
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\int_0^1 x\,dx",
        r"\lim_{x \to 0} \frac{\sin x}{x}",
    ],
)
def test_ordinary_answers_pass(latex: str) -> None:
    assert too_big_reason(unevaluated(latex)) is None
    assert too_big_reason(parse(f"${latex}$", parsing_timeout=None)) is None
