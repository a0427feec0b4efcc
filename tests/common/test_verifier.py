"""The verifier pool: verdicts in parallel, bombs refused within the bound, overrunning and
crashing workers killed and replaced, calls from any thread, the batch deadline, counted outcomes."""

from __future__ import annotations

import concurrent.futures
import doctest
import math
import operator
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pebble import ProcessExpired

from coldstart.common import answer_bounds, rewards, verifier
from coldstart.common.rewards import accuracy_reward, check_metrics_since
from coldstart.common.verifier import Verdict, map_within_deadline, math_verdict

pytestmark = pytest.mark.timeout(120)

HANG_GUARD_S = 1.5  # one check must return within its 1 s bound; the margin absorbs CI noise
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _warm_pool() -> None:
    """Every worker up before each test (the first test also waits for the imports)."""
    verifier.warm_up()


PAIRS = [
    (r"\frac{1}{2}", "0.5", Verdict.EQUAL),
    (r"\frac{\sqrt{3}}{2}", r"\sqrt{3}/2", Verdict.EQUAL),
    (r"2\sqrt{2}", r"\sqrt{8}", Verdict.EQUAL),
    ("x^{2}+2x+1", "(x+1)^{2}", Verdict.EQUAL),
    (r"e^{-x^{2}}", r"\frac{1}{e^{x^{2}}}", Verdict.EQUAL),
    (r"\binom{5}{2}", "10", Verdict.EQUAL),
    ("2^{10}", "1024", Verdict.EQUAL),
    (r"50\%", "0.5", Verdict.EQUAL),
    (r"\{2, 1\}", r"\{1, 2\}", Verdict.EQUAL),
    ("0.33", "1/3", Verdict.DIFFERENT),
    (r"\sqrt{2}", r"\sqrt{3}", Verdict.DIFFERENT),
    ("x^{2}+2x+2", "(x+1)^{2}", Verdict.DIFFERENT),
    (r"\binom{5}{2}", "11", Verdict.DIFFERENT),
    ("5", "6", Verdict.DIFFERENT),
    ("1,000", "1000", Verdict.EQUAL),
]

BOMBS = [
    r"\binom{10^8}{5 \cdot 10^7}",
    r"\binom{100000}{50000}",  # sympy computes this one while parsing, unless told not to
    "99999999999^{99999}",
    r"\Gamma(10^{7})",
    r"\Gamma(100000)",
    "(10^9)!",
    "1000000!",
    "9^{9^{9^{9}}}",
    r"10^{10^{100}}",
    r"\sin(10^{3000})",
    r"\sqrt{10^{3000}+1}",
    r"\prod_{k=1}^{10^{6}} k",
    r"\sum_{k=1}^{10000} \frac{1}{k}",
    "(x+1)^{1000}",
    r"e^{10^{9}}",
    "1.5^{999999}",
    "{" * 400 + "1" + "}" * 400,
    "7" * 2000,
]


def test_ordinary_pairs_get_their_verdicts_in_parallel() -> None:
    verdicts = map_within_deadline(
        lambda pair, bound: math_verdict(pair[0], pair[1], bound),
        PAIRS,
        timeout_s=5.0,  # a verdict, not the bound, is under test; a loaded machine is slow
        deadline_s=None,
        default=None,
    )
    assert verdicts == [expected for _, _, expected in PAIRS]


@pytest.mark.parametrize("bomb", BOMBS, ids=lambda b: b[:30])
def test_each_bomb_is_refused_within_the_bound(bomb: str) -> None:
    before = verifier.counts()["too_big"]
    start = time.perf_counter()
    assert math_verdict(bomb, "5", 1.0) is Verdict.TOO_BIG
    assert time.perf_counter() - start < HANG_GUARD_S
    assert verifier.counts()["too_big"] == before + 1


def test_a_bomb_equal_as_a_string_is_still_equal() -> None:
    assert math_verdict("99999999999^{99999}", "99999999999^{99999}", 1.0) is Verdict.EQUAL


def test_ten_bombs_in_one_batch_kill_no_worker() -> None:
    """Refused by their size, not cut off by the bound: each would otherwise cost 1 s and a
    killed worker."""
    completions = [rf"so \boxed{{{bomb}}}" for bomb in BOMBS[:10]] + [r"\boxed{\frac{1}{2}}"]
    before, pids = verifier.counts(), set(verifier.worker_pids())
    start = time.perf_counter()
    scores = accuracy_reward(completions, ["5"] * 10 + ["0.5"], batch_deadline_s=30.0)
    assert time.perf_counter() - start < 10 * HANG_GUARD_S  # a hang guard: each is bounded
    assert scores == [0.0] * 10 + [1.0]
    assert set(verifier.worker_pids()) == pids  # no worker killed
    metrics = check_metrics_since(before)
    assert metrics == {
        "reward/timeouts": 0.0,
        "reward/too_big": 10.0,
        "reward/verifier_errors": 0.0,
    }


SLOW_IDENTITY = r"\sin^{2}(x+y)+\cos^{2}(x+y)+\sin^{2}(u+v)+\cos^{2}(u+v)+\tan(x)\cot(x)"


def test_an_overrun_scores_wrong_is_counted_and_its_worker_is_replaced() -> None:
    before, pids = verifier.counts(), set(verifier.worker_pids())
    start = time.perf_counter()
    # ~0.4 CPU-s in a fresh worker: the 0.1 ms bound passes long before, even when a loaded
    # machine wakes this thread late.
    assert math_verdict(SLOW_IDENTITY, "3", 1e-4) is Verdict.TIMEOUT
    assert time.perf_counter() - start < HANG_GUARD_S
    assert verifier.counts()["timeouts"] == before["timeouts"] + 1
    verifier.warm_up()  # the replacement starts in the background; wait for it here
    assert set(verifier.worker_pids()) != pids
    assert math_verdict(SLOW_IDENTITY, "3", 30.0) is Verdict.EQUAL


@pytest.mark.parametrize(
    ("fn", "args"),
    [(time.sleep, (30,)), (pow, (99999999999, 99999999))],  # Python code; one C call
    ids=["sleep", "c-pow"],
)
def test_a_call_that_never_ends_is_killed_within_its_timeout_and_the_next_works(fn, args) -> None:
    start = time.perf_counter()
    with pytest.raises(concurrent.futures.TimeoutError):
        verifier.run_in_worker(fn, args, 0.3)
    assert time.perf_counter() - start < 0.3 + HANG_GUARD_S
    assert verifier.run_in_worker(operator.add, (2, 3), 5.0) == 5


def _crash(pred: str, gold: str) -> tuple[str, str]:
    """Stands in for check_pair: the worker dies as on a segfault in C code."""
    os.kill(os.getpid(), signal.SIGKILL)
    return "", ""


def test_a_crashing_worker_gives_error_and_the_next_check_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = verifier.counts()["errors"]
    with monkeypatch.context() as patched:
        patched.setattr(verifier, "check_pair", _crash)
        assert math_verdict(r"\sqrt{16}", "4", 5.0) is Verdict.ERROR
    assert verifier.counts()["errors"] == before + 1
    assert math_verdict(r"\sqrt{16}", "4", 5.0) is Verdict.EQUAL
    with pytest.raises(ProcessExpired):
        verifier.run_in_worker(os._exit, (3,), 5.0)  # any call whose worker dies under it


def test_workers_killed_from_outside_are_replaced() -> None:
    killed = verifier.worker_pids()
    assert killed, "a warmed pool has workers"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert verifier.run_in_worker(operator.add, (2, 3), 5.0) == 5
    verifier.warm_up()
    assert len(verifier.worker_pids()) == verifier.pool_size()
    assert not set(verifier.worker_pids()) & set(killed)


def test_what_a_worker_raises_is_raised_in_the_caller() -> None:
    with pytest.raises(ValueError, match="math domain error"):
        verifier.run_in_worker(math.sqrt, (-1.0,), 5.0)


def _sleep_in_time(seconds: float, bound: float) -> bool:
    try:
        verifier.run_in_worker(time.sleep, (seconds,), bound)
    except concurrent.futures.TimeoutError:
        return False
    return True


def test_items_past_the_batch_deadline_get_the_default_and_are_counted() -> None:
    before = verifier.counts()["past_deadline"]
    start = time.perf_counter()
    done = map_within_deadline(
        _sleep_in_time, [0.4] * 12, timeout_s=1.0, deadline_s=0.6, default=None
    )
    assert time.perf_counter() - start < 0.6 + HANG_GUARD_S
    late = done.count(None)
    assert late > 0 and set(done) <= {True, False, None}
    assert verifier.counts()["past_deadline"] == before + late


def test_checks_from_a_non_main_thread_in_a_fresh_process() -> None:
    """The pool starts, bounds and replaces workers from any thread (math-verify's own
    signal-based timeout would refuse to run there)."""
    script = textwrap.dedent(
        r"""
        import threading
        from coldstart.common.verifier import math_verdict
        slow = r"\sin^{2}(x+y)+\cos^{2}(x+y)+\sin^{2}(u+v)+\cos^{2}(u+v)+\tan(x)\cot(x)"
        out = []
        def check():
            out.append(math_verdict(r"\frac{1}{2}", "0.5", 5.0).value)
            out.append(math_verdict(slow, "3", 1e-4).value)
            out.append(math_verdict(r"\sqrt{9}", "3", 5.0).value)
        thread = threading.Thread(target=check)
        thread.start()
        thread.join()
        print(" ".join(out))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["equal", "timeout", "equal"]


@pytest.mark.parametrize("module", [verifier, answer_bounds, rewards], ids=lambda m: m.__name__)
def test_doctests(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
