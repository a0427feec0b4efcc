"""Synthetic completions for the reward benchmark: ordinary answers and reward bombs.

Ordinary answers look like what a policy writes on math problems: integers, decimals against
fractions, roots, polynomials, percentages, degrees, units, sets, option letters, right and
wrong, with random numbers so no two strings are alike (nothing is served from a cache).
Bombs are answers whose evaluation can run for ever (huge binomials, factorials, powers,
gamma arguments, towers, long products and sums, transcendental functions of huge numbers,
expansions of high powers), varied the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Case = tuple[str, str]  # (boxed answer, gold)


def _ordinary(kind: int, a: int, b: int, wrong: int) -> Case:
    """An answer of form ``kind`` built on the numbers a, b; right if ``wrong`` is 0, else off by it."""
    w = wrong
    if kind == 0:
        return str(a + w), str(a)
    if kind == 1:
        return f"{(a + w) / b:.6f}", f"\\frac{{{a}}}{{{b}}}"
    if kind == 2:
        return f"\\frac{{{a + w}}}{{{b}}}", f"{a / b:.6f}"
    if kind == 3:
        k = a % 9 + 2
        return f"{k}\\sqrt{{{b}}}", f"\\sqrt{{{k * k * b + w}}}"
    if kind == 4:
        return f"x^{{2}}+{2 * b}x+{b * b}", f"(x+{b + w})^{{2}}"
    if kind == 5:
        return f"{a + w}\\%", f"{a / 100}"
    if kind == 6:
        return f"{a % 360}^\\circ", str(a % 360 + 5 * w)
    if kind == 7:
        return f"{a + w} \\text{{ cm}}", str(a)
    if kind == 8:
        return f"\\{{{a}, {b + w}\\}}", f"\\{{{b}, {a}\\}}"
    if kind == 9:
        return f"({'ABCD'[(a + w) % 4]})", "ABCD"[a % 4]
    if kind == 10:
        return f"\\frac{{{a + w}\\pi}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}\\pi"
    return f"{a}.{b + w}", f"{a}.{b}"


N_KINDS = 12


def _numbers(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(N_KINDS), rng.randint(2, 999), rng.randint(2, 99)


_BOMBS: list[Callable[[random.Random], str]] = [
    lambda r: (
        f"\\binom{{10^{{{r.randint(7, 9)}}}}}{{{r.randint(2, 5)} \\cdot 10^{{{r.randint(6, 7)}}}}}"
    ),
    lambda r: f"{r.randint(10**9, 10**11)}^{{{r.randint(10_000, 99_999)}}}",
    lambda r: f"\\Gamma(10^{{{r.randint(6, 9)}}})",
    lambda r: f"(10^{{{r.randint(7, 12)}}})!",
    lambda r: f"{r.randint(10**5, 10**7)}!",
    lambda r: (
        f"{r.randint(2, 9)}^{{{r.randint(2, 9)}^{{{r.randint(2, 9)}^{{{r.randint(2, 9)}}}}}}}"
    ),
    lambda r: f"10^{{10^{{{r.randint(50, 200)}}}}}",
    lambda r: f"\\sin(10^{{{r.randint(3000, 9000)}}})",
    lambda r: f"\\sqrt{{10^{{{r.randint(3000, 9000)}}}+{r.randint(1, 9)}}}",
    lambda r: f"\\log(10^{{{r.randint(3000, 9000)}}}+{r.randint(1, 9)})",
    lambda r: f"\\prod_{{k=1}}^{{10^{{{r.randint(5, 8)}}}}} k",
    lambda r: f"\\sum_{{k=1}}^{{{r.randint(10_000, 99_999)}}} \\frac{{1}}{{k}}",
    lambda r: f"(x+{r.randint(1, 9)})^{{{r.randint(1000, 9999)}}}",
    lambda r: f"e^{{10^{{{r.randint(6, 12)}}}}}",
    lambda r: f"\\frac{{(10^{{{r.randint(6, 9)}}})!}}{{{r.randint(2, 9)}}}",
    lambda r: f"{r.randint(2, 9)}.5^{{{r.randint(100_000, 999_999)}}}",
    lambda r: "{" * (k := r.randint(300, 499)) + "1" + "}" * k,
    lambda r: str(r.randint(1, 9)) * r.randint(1001, 3000),
]


def ordinary_cases(n: int, seed: int = 0) -> list[Case]:
    """``n`` different ordinary answers, half right (the worst case for any cache)."""
    rng = random.Random(seed)
    return [_ordinary(*_numbers(rng), wrong=rng.choice((0, 1))) for _ in range(n)]


def rollout_cases(n: int, seed: int = 0, group: int = 10, bomb_share: float = 0.0) -> list[Case]:
    """A GRPO rollout batch: ``n // group`` problems, ``group`` answers to each.

    A group's ordinary answers share its gold and repeat as a policy's samples do (the right
    answer, or one of three wrong ones); ``bomb_share`` of all answers are bombs instead,
    every kind in turn, each with its own numbers.
    """
    rng = random.Random(seed + 1)
    cases = []
    for i in range(n):
        if i % group == 0:
            numbers = _numbers(rng)
        if rng.random() < bomb_share:
            cases.append((_BOMBS[len(cases) % len(_BOMBS)](rng), _ordinary(*numbers, 0)[1]))
        else:
            cases.append(_ordinary(*numbers, wrong=rng.choice((0, 0, 0, 1, 2, 3))))
    return cases


def adversarial_unique_cases(n: int, seed: int = 0, bomb_share: float = 0.4) -> list[Case]:
    """Bombs mixed with ordinary answers, no two alike (no group structure, no repeats)."""
    rng = random.Random(seed + 2)
    return [
        (_BOMBS[i % len(_BOMBS)](rng), str(rng.randint(1, 99)))
        if rng.random() < bomb_share
        else _ordinary(*_numbers(rng), wrong=rng.choice((0, 1)))
        for i in range(n)
    ]


SETS = {
    "ordinary": ordinary_cases,
    "rollout": rollout_cases,
    "adversarial": lambda n: rollout_cases(n, bomb_share=0.4),
    "adversarial_unique": adversarial_unique_cases,
}
"""Name -> builder ``(n) -> cases``."""


def as_completion(answer: str) -> str:
    """A response that reasons, then boxes ``answer`` (the reward reads only the last box)."""
    return f"Working through the problem step by step gives the result. \\boxed{{{answer}}}"
