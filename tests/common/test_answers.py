"""Answer extraction and verification: edge cases, an equivalence table, and the time bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from coldstart.common import verifier
from coldstart.common.answers import (
    choice_letter,
    extract_answer,
    extract_boxed,
    is_equivalent,
    warm_up,
)

pytestmark = pytest.mark.timeout(60)

HANG_GUARD_S = 1.5  # calls must return within timeout_s (1 s); the margin absorbs CI noise
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _warm_worker() -> None:
    """Start (or finish restarting) the worker outside the timed part of each test."""
    warm_up()


# --- extraction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{x^{2^{k}} + \sqrt{\frac{a}{b}}}", r"x^{2^{k}} + \sqrt{\frac{a}{b}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not structure
        (r"\boxed{ 7 }", "7"),
        (r"\boxed{}", ""),
        (r"\boxed 5$ done", "5"),
        (r"\fbox{C}", "C"),
        (r"\boxed{\boxed{3}}", r"\boxed{3}"),  # the outer box is the last top-level box
        ("no box here", None),
        (r"\boxed{1} and then \boxed{2", None),  # truncated final answer: no answer
        (r"\boxedx{1}", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


def test_extract_boxed_scans_only_the_tail_of_huge_responses() -> None:
    start = time.perf_counter()
    assert extract_boxed("x" * 1_000_000 + r" \boxed{42}") == "42"
    assert extract_boxed(r"\boxed{1}" + "x" * 1_000_000) is None
    assert time.perf_counter() - start < HANG_GUARD_S


@pytest.mark.parametrize(
    ("response", "kwargs", "expected"),
    [
        (r"thinking... \boxed{12}", {}, "12"),
        ("Thus the answer is 12.", {}, "12"),
        ("Thus the final answer is $\\frac{1}{2}$. Hope it helps", {}, r"\frac{1}{2}"),
        ("Answer: **x + 1**", {}, "x + 1"),
        ("the answer is 3\nno, the answer is 4.", {}, "4"),
        ("some reasoning\n\n 3.5 \n", {}, "3.5"),
        ("The answer is 12.", {"boxed_only": True}, None),
        (r"empty \boxed{} box. The answer is 3.", {}, "3"),
        (r"empty \boxed{}", {"boxed_only": True}, None),
        (r"\boxed{(B)}", {"choices": ["1", "2"]}, "B"),
        ("The answer is B. 12", {"choices": ["10", "12"]}, "B"),
        (r"\boxed{(B)}", {}, "(B)"),  # without choices, text is returned as written
        ("", {}, None),
    ],
)
def test_extract_answer(response: str, kwargs: dict, expected: str | None) -> None:
    assert extract_answer(response, **kwargs) == expected


@pytest.mark.parametrize(
    ("text", "n_choices", "expected"),
    [
        ("B", 5, "B"),
        ("(b)", 5, "B"),
        ("C. 12", 5, "C"),
        ("option D", 5, "D"),
        ("E", 4, None),
        ("Bob", 5, None),
    ],
)
def test_choice_letter(text: str, n_choices: int, expected: str | None) -> None:
    assert choice_letter(text, n_choices) == expected


# --- equivalence ------------------------------------------------------------------------

EQUIVALENCE_TABLE = [
    # (pred, gold, equivalent)
    ("5", "5", True),
    ("5", "6", False),
    ("-3", "-3.0", True),
    ("0.5", "1/2", True),
    ("1/2", "0.5", True),
    (r"\frac{1}{2}", "0.5", True),
    (r"\dfrac12", "1/2", True),
    (r"\frac{2}{4}", r"\frac{1}{2}", True),
    ("0.333333", "1/3", True),
    ("0.33", "1/3", False),
    ("1,000", "1000", True),
    ("10.0", "10", True),
    ("3.0001", "3", False),
    (r"\sqrt{8}", r"2\sqrt{2}", True),
    (r"\sqrt{3}/2", r"\frac{\sqrt{3}}{2}", True),
    (r"2^{1/2}", r"\sqrt{2}", True),
    (r"\sqrt{2}", r"\sqrt{3}", False),
    ("1+x", "x+1", True),
    ("x^{2}", "x^2", True),
    ("x", "2", False),
    (r"\pi", "3.14", False),
    ("30°", "30", True),
    (r"30^\circ", "30", True),
    ("30 degrees", "30", True),
    ("5 cm", "5", True),
    (r"5\text{ cm}", "5", True),
    (r"50\%", "0.5", True),
    (r"12\%", "12", True),
    (r"\{2, 1\}", r"\{1, 2\}", True),
    ("x=3", "3", True),
    (r"$\frac{1}{2}$.", "0.5", True),
    ("", "5", False),
    ("not a number", "5", False),
]


@pytest.mark.parametrize(("pred", "gold", "expected"), EQUIVALENCE_TABLE)
def test_is_equivalent(pred: str, gold: str, expected: bool) -> None:
    assert is_equivalent(pred, gold) is expected


CHOICES = ["10", "12", r"\frac{1}{2}", "a right angle"]


@pytest.mark.parametrize(
    ("pred", "gold", "choices", "expected"),
    [
        ("B", "B", None, True),
        ("(B)", "B", None, True),
        ("B.", "B", None, True),
        (r"\text{B}", "B", None, True),
        ("(B) 12", "B", CHOICES, True),
        ("C", "B", None, False),
        ("12", "B", CHOICES, True),  # option text
        ("12.0", "B", CHOICES, True),  # math-equivalent to the option text
        ("0.5", "C", CHOICES, True),
        ("A Right  Angle", "D", CHOICES, True),
        ("10", "B", CHOICES, False),  # another option's text
        ("13", "B", CHOICES, False),
        ("12", "B", None, False),  # without choices a letter gold needs a letter
        ("B", "12", CHOICES, True),  # gold given as option text
        ("E", "E", None, True),
        ("E", "B", CHOICES, False),  # only four options: "E" names none of them
    ],
)
def test_is_equivalent_multiple_choice(
    pred: str, gold: str, choices: list[str] | None, expected: bool
) -> None:
    assert is_equivalent(pred, gold, choices=choices) is expected


# --- time bound -------------------------------------------------------------------------

ADVERSARIAL_ANSWERS = [
    r"9^{9^{9^9}}",
    r"10^{10^{100}}",
    "9**9**9",
    r"10^{1000000000}",
    "100000!",
    r"(10^{10})!",
    "((10!)!)!",
    r"\binom{100000000}{50000000}",  # refused by its size before it is evaluated
    "{" * 5000 + "1" + "}" * 5000,
    "{" * 400 + "1" + "}" * 400,
    "1" * 2000,
]


@pytest.mark.parametrize("pred", ADVERSARIAL_ANSWERS, ids=lambda p: p[:24])
def test_adversarial_answers_are_wrong_within_the_time_bound(pred: str) -> None:
    start = time.perf_counter()
    assert is_equivalent(pred, "5") is False
    assert time.perf_counter() - start < HANG_GUARD_S


ADVERSARIAL_RESPONSES = [
    r"so the answer is \boxed{10^{10^{100}}}!",
    r"\boxed{" + "x" * 1_000_000 + "}",
    "a" * 1_000_000,
    r"\boxed{" + "{" * 100_000 + "}" * 100_000 + "}",
    r"\boxed{" * 50_000,
]


@pytest.mark.parametrize("response", ADVERSARIAL_RESPONSES, ids=lambda r: r[:24])
def test_adversarial_responses_are_wrong_within_the_time_bound(response: str) -> None:
    start = time.perf_counter()
    answer = extract_answer(response)
    assert answer is None or is_equivalent(answer, "5") is False
    assert time.perf_counter() - start < HANG_GUARD_S


def test_timeout_is_honoured_and_the_worker_recovers() -> None:
    start = time.perf_counter()
    assert is_equivalent(r"\binom{100000000}{50000000}", "5", timeout_s=0.2) is False
    assert time.perf_counter() - start < 0.2 + 0.5
    assert is_equivalent(r"\frac{1}{2}", r"\sqrt{1/4}")  # the replacement worker answers


def test_a_worker_killed_from_outside_is_replaced() -> None:
    for pid in verifier.worker_pids():
        os.kill(pid, signal.SIGKILL)
    assert is_equivalent(r"\sqrt{4}", "2")  # fast path not taken: needs a worker


def test_calls_from_a_thread_pool() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda row: is_equivalent(row[0], row[1]), EQUIVALENCE_TABLE))
    assert results == [expected for _, _, expected in EQUIVALENCE_TABLE]


def test_a_script_in_a_fresh_interpreter_scores_and_exits(tmp_path: Path) -> None:
    """As a stage's process runs it: a fresh interpreter, here a script run by path. It must
    score and exit (the workers are cleaned up). The checkers' workers come from
    multiprocessing's fork server, which imports a script's top level as `__mp_main__`, so the
    script keeps its work under a main guard, as Python's forkserver and spawn require."""
    script = tmp_path / "score.py"
    script.write_text(
        textwrap.dedent(
            r"""
            from coldstart.common.answers import is_equivalent

            if __name__ == "__main__":
                print(is_equivalent(r"\frac{1}{2}", "0.5"), is_equivalent(r"10^{10^{100}}", "1"))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
