"""Math verification with a hard time bound per check, on a pebble process pool.

Why a time bound: sympy can run for ever on model output, and math-verify's own timeout is
``signal.alarm``, which cannot interrupt C code (big-int ``pow``) and refuses to run outside
the main thread (eval uses thread pools, GRPO rewards may run anywhere). So each check runs in
a worker of a ``pebble.ProcessPool``, scheduled with ``timeout=timeout_s``: on overrun pebble
kills the worker and starts a replacement, and the answer counts as wrong
(``Verdict.TIMEOUT``, counted in ``counts()``). ``map_within_deadline`` spreads a batch over
the workers, one per usable CPU (at most 8), with a deadline for the whole batch.

Workers are forked by multiprocessing's fork server, a fresh interpreter that imported and
warmed up sympy and math-verify once (2-3 s), so a replacement starts in milliseconds with
nothing to import and none is a fork of the caller (which may hold a model, CUDA state and
threads). As with any multiprocessing start method but fork, a script run by path must keep its
top-level work under ``if __name__ == "__main__":``.

Before a worker evaluates anything, ``answer_bounds`` refuses answers with numbers too big to
evaluate (``Verdict.TOO_BIG``): without it each such bomb would cost a full time bound and a
killed worker (bench/results/reward_bombs.md). Cheap checks (equal strings, plain numbers,
length, nesting) are decided here without a worker, and verdicts are kept for answers that
repeat.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import enum
import functools
import logging
import math
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from typing import TypeVar

from pebble import ProcessExpired, ProcessPool

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1_000
"""An extracted answer longer than this is judged wrong without parsing."""

MAX_BRACE_DEPTH = 20
"""Deeper nesting is judged wrong without parsing (the LaTeX parser recurses per level)."""

T = TypeVar("T")
R = TypeVar("R")


class Verdict(enum.Enum):
    """The outcome of one check; only EQUAL counts as equivalent."""

    EQUAL = "equal"
    DIFFERENT = "different"
    TOO_BIG = "too_big"  # a number too big to evaluate in the bound: not equal, not evaluated
    TIMEOUT = "timeout"  # over the time bound: not equal, the worker was replaced
    ERROR = "error"  # the verifier raised or its worker died: not equal, logged


# --------------------------------------------------------------------------- counters


class _Counts:
    """Checks that did not end in a plain verdict, since the process started (thread-safe)."""

    KEYS = ("timeouts", "past_deadline", "too_big", "errors")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = Counter(dict.fromkeys(self.KEYS, 0))

    def add(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


_COUNTS = _Counts()
_VERDICT_COUNTER = {
    Verdict.TIMEOUT: "timeouts",
    Verdict.TOO_BIG: "too_big",
    Verdict.ERROR: "errors",
}


def counts() -> dict[str, int]:
    """Running totals in this process: ``timeouts`` (over the per-check bound), ``past_deadline``
    (not started before a batch deadline), ``too_big`` and ``errors``. Callers log differences."""
    return _COUNTS.snapshot()


# --------------------------------------------------------------------------- verdicts


def math_equivalent(pred: str, gold: str, timeout_s: float) -> bool:
    """Whether two cleaned math answers are equal (see ``math_verdict``)."""
    return math_verdict(pred, gold, timeout_s) is Verdict.EQUAL


def math_verdict(pred: str, gold: str, timeout_s: float) -> Verdict:
    """Equality of two math answers: cheap checks here, math-verify in a worker.

    Returns within ``timeout_s`` of getting a worker for any input. Equal strings are equal
    even when they are too big to evaluate.

    >>> math_verdict("1,000", "1000", 1.0), math_verdict("3", "4", 1.0)
    (<Verdict.EQUAL: 'equal'>, <Verdict.DIFFERENT: 'different'>)
    >>> math_verdict("{" * 30 + "1" + "}" * 30, "1", 1.0)
    <Verdict.TOO_BIG: 'too_big'>
    """
    if not pred or not gold:
        return Verdict.DIFFERENT
    if squash(pred) == squash(gold):
        return Verdict.EQUAL
    numbers = _compare_plain_numbers(pred, gold)
    if numbers is not None:
        return Verdict.EQUAL if numbers else Verdict.DIFFERENT
    verdict = _cheap_size_check(pred) or _cheap_size_check(gold) or _DECIDED.get((pred, gold))
    if verdict is None:
        verdict = _run_check(pred, gold, timeout_s)
        if verdict in _DECIDED.KEEP:
            _DECIDED.put((pred, gold), verdict)
    if verdict in _VERDICT_COUNTER:
        _COUNTS.add(_VERDICT_COUNTER[verdict])
    return verdict


class _VerdictCache:
    """The last ``size`` verdicts a worker gave, by (pred, gold): a GRPO group's completions
    often repeat an answer, and each repeat would cost a parse and a verify again. Timeouts
    and errors are not kept (they may not happen again)."""

    KEEP = (Verdict.EQUAL, Verdict.DIFFERENT, Verdict.TOO_BIG)

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._verdicts: dict[tuple[str, str], Verdict] = {}

    def get(self, key: tuple[str, str]) -> Verdict | None:
        with self._lock:
            return self._verdicts.get(key)

    def put(self, key: tuple[str, str], verdict: Verdict) -> None:
        with self._lock:
            if len(self._verdicts) >= self._size:
                del self._verdicts[next(iter(self._verdicts))]  # the oldest
            self._verdicts[key] = verdict


_DECIDED = _VerdictCache(4096)


def squash(text: str) -> str:
    """``text`` without whitespace (string equality that ignores spacing)."""
    return "".join(text.split())


def _cheap_size_check(text: str) -> Verdict | None:
    """TOO_BIG for text the parser should not see: too long, or nested too deep."""
    if len(text) > MAX_ANSWER_CHARS or _brace_depth(text) > MAX_BRACE_DEPTH:
        return Verdict.TOO_BIG
    return None


def _brace_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]":
            depth -= 1
    return deepest


_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})")
_PLAIN_FRACTION_RE = re.compile(r"[-+]?\d{1,40}/\d{1,40}")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _plain_number(text: str) -> Fraction | None:
    """``text`` as an exact number if it is a plain decimal ("-1,234.50") or "a/b"; else None."""
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if _PLAIN_NUMBER_RE.fullmatch(text) or (
        _PLAIN_FRACTION_RE.fullmatch(text) and text.split("/")[1].strip("0")
    ):
        return Fraction(text)
    return None


def _compare_plain_numbers(pred: str, gold: str) -> bool | None:
    """Exact comparison when both are plain numbers; None (ask sympy) when it cannot decide.

    Unequal numbers where one is a fraction go to sympy, which rounds ("1/3" == "0.333333").
    """
    a, b = _plain_number(pred), _plain_number(gold)
    if a is None or b is None:
        return None
    if a == b:
        return True
    return None if "/" in pred + gold else False


def _run_check(pred: str, gold: str, timeout_s: float) -> Verdict:
    try:
        verdict, detail = run_in_worker(check_pair, (pred, gold), timeout_s)
    except concurrent.futures.TimeoutError:
        return Verdict.TIMEOUT
    except (ProcessExpired, BrokenProcessPool) as exc:  # crashed or killed from outside
        log.warning(
            "an answer-checking worker died on %r against %r: %s", pred[:80], gold[:80], exc
        )
        return Verdict.ERROR
    if verdict == Verdict.ERROR.value:
        log.warning("math-verify failed on %r against %r: %s", pred[:80], gold[:80], detail)
    return Verdict(verdict)


# --------------------------------------------------------------------------- in the worker

# Functions that sympy evaluates while math-verify *parses* when their arguments are plain
# integers (\binom{100000}{50000} took 3 s, \Gamma(100000) longer): such answers are parsed
# once more with evaluation off and checked by answer_bounds before the real parse.
_EVALUATED_WHILE_PARSING_RE = re.compile(r"binom|choose|gamma|gcd|lcm|mod|operatorname", re.I)


def check_pair(pred: str, gold: str) -> tuple[str, str]:
    """``(verdict value, detail)`` for two answers; runs in a worker (imports sympy).

    math-verify's own signal-based timeouts are off: the caller enforces the bound.
    """
    from math_verify import verify

    from coldstart.common.answer_bounds import too_big_reason

    try:
        parsed = []
        for text in (gold, pred):
            reason = None
            if _EVALUATED_WHILE_PARSING_RE.search(text):
                reason = too_big_reason(_parse_unevaluated(text))
            parsed.append(_parse(text) if reason is None else [])
            reason = reason or too_big_reason(parsed[-1])
            if reason:
                return Verdict.TOO_BIG.value, reason
        if not parsed[0] or not parsed[1]:
            return Verdict.DIFFERENT.value, "unparsed"
        equal = verify(list(parsed[0]), list(parsed[1]), timeout_seconds=None)
        return (Verdict.EQUAL if equal else Verdict.DIFFERENT).value, ""
    except Exception as exc:  # reported to the caller, which logs it and counts an error
        return Verdict.ERROR.value, f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> tuple:
    """math-verify's parse, kept per worker: a GRPO group shares its gold answer."""
    from math_verify import parse

    return tuple(parse(f"${text}$", parsing_timeout=None))


def _parse_unevaluated(text: str) -> list:
    """math-verify's parse with sympy's evaluation off (nothing is computed)."""
    import sympy
    from math_verify import parse
    from math_verify.parser import parse_latex_cached

    with sympy.evaluate(False):
        parsed = parse(f"${text}$", parsing_timeout=None)
    parse_latex_cached.cache_clear()  # it cached the unevaluated tree under the same text
    return parsed


_WARM_UP_PAIRS = [
    ("1/2", "0.5"), ("x+1", "1+x"), (r"\frac{\sqrt{3}}{2}", r"\sqrt{3}/2"),
    (r"2\sqrt{2}", r"\sqrt{8}"), (r"x^{2}+2x+1", "(x+1)^{2}"), (r"\sin(1)", "5"),
    (r"\log(3)", r"\ln 3"), (r"e^{2}", "7.389"), (r"\frac{\pi}{3}", r"\frac{1}{3}\pi"),
    ("5!", "120"), (r"\binom{5}{2}", "10"), (r"\Gamma(5)", "24"), (r"\sum_{k=1}^{10} k", "55"),
    (r"\prod_{k=1}^{5} k", "120"), (r"50\%", "0.5"), (r"30^\circ", "30"), ("5 cm", "5"),
    (r"\{1, 2\}", r"\{2, 1\}"), ("(1, 3]", "(1,3]"), ("x=3", "3"), (r"\lfloor 2.5 \rfloor", "2"),
    (r"\max(2, 3)", "3"), (r"2^{10}", "1024"), (r"\frac{10^{3}+1}{7}", "143"),
]  # fmt: skip
"""Typical answers checked once in this process before the workers fork: they start with
sympy's code paths and caches warm (a worker whose first check is a polynomial otherwise spends
0.3 s on it)."""


# --------------------------------------------------------------------------- the pool

MAX_WORKERS = 8
"""Workers per pool at most: more rarely helps and each holds ~100 MB."""

QUEUE_GUARD_S = 60.0
"""How long a check may wait for a free worker before it counts as a timeout (a guard against
a wedged pool; ``timeout_s`` bounds only the time on a worker)."""

_POOL: ProcessPool | None = None
_POOL_LOCK = threading.Lock()


def _default_size() -> int:
    """One worker per CPU this process may use, at most MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


_SIZE = _default_size()


def _init_worker() -> None:
    """In each worker: let SIGTERM kill at once. pebble stops an overrunning worker with
    SIGTERM, and its own handler only runs once a C call (big-int ``pow``) returns."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _pool() -> ProcessPool:
    """The running pool, (re)started if needed: pebble marks a pool broken when a worker dies
    while no task runs (killed from outside), and such a pool takes no more tasks."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or not _POOL.active:
            _stop_pool()
            _POOL = ProcessPool(_SIZE, initializer=_init_worker, context=_zygote_context())
        return _POOL


def _zygote_context() -> multiprocessing.context.BaseContext:
    """Workers forked by multiprocessing's fork server: a fresh interpreter that imported and
    warmed up sympy and math-verify once (`answer_warm_up`), so a replacement starts in
    milliseconds with nothing to import, and no worker is a fork of the caller (which may hold a
    model, CUDA state and threads)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["coldstart.common.answer_warm_up"])
    return context


@functools.cache
def _warm_up_checks() -> None:
    """Import math-verify and sympy here and warm them up, once per process."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings
    for pred, gold in _WARM_UP_PAIRS:
        check_pair(pred, gold)


def _stop_pool() -> None:
    """Stop the pool's threads, then its workers. At exit this must run before pebble's own
    handler (atexit runs last-registered first): that one stops the workers while the pool's
    thread may still start replacements, and multiprocessing then waits for them for ever."""
    if _POOL is not None:
        _POOL.stop()
        _POOL.join()


def _forget_pool_in_child() -> None:
    """A forked child of the caller starts its own pool (the parent's threads are not in it)."""
    global _POOL
    _POOL = None


atexit.register(_stop_pool)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


# --------------------------------------------------------------------------- public helpers


def warm_up() -> None:
    """Import the checker and start every worker now, so the first check does not wait for
    them (call before timing-sensitive loops; optional)."""
    run_in_worker(os.getpid, (), QUEUE_GUARD_S)
    deadline = time.monotonic() + QUEUE_GUARD_S
    while len(worker_pids()) < _SIZE and time.monotonic() < deadline:
        time.sleep(0.01)


def run_in_worker(fn: Callable[..., R], args: tuple, timeout_s: float) -> R:
    """``fn(*args)`` in a worker, killed after ``timeout_s`` on it (a replacement starts).

    Raises ``concurrent.futures.TimeoutError`` on overrun or after QUEUE_GUARD_S waiting for a
    worker, ``pebble.ProcessExpired`` if the worker died under it, and whatever ``fn`` raised.
    ``fn`` must be importable by name. A pool broken under the call (a worker killed from
    outside while idle) is replaced and the call sent once more.
    """
    try:
        return _result(fn, args, timeout_s)
    except BrokenProcessPool:
        return _result(fn, args, timeout_s)


def _result(fn: Callable[..., R], args: tuple, timeout_s: float) -> R:
    future = _pool().schedule(fn, args, timeout=timeout_s)
    try:
        return future.result(timeout=timeout_s + QUEUE_GUARD_S)
    except concurrent.futures.TimeoutError:  # the builtin one from Python 3.11 on
        future.cancel()  # still queued: never runs; running: pebble kills its worker
        raise


def map_within_deadline(
    fn: Callable[[T, float], R],
    items: Sequence[T] | Iterable[T],
    *,
    timeout_s: float,
    deadline_s: float | None,
    default: R,
) -> list[R]:
    """``[fn(item, time_bound) ...]`` in parallel over the pool's workers, in order.

    Each call gets ``timeout_s``, cut to what is left of ``deadline_s`` (seconds from now;
    None = no deadline). Items not started before the deadline get ``default`` and are
    counted (``counts()["past_deadline"]``, logged). Exceptions from ``fn`` propagate.
    """
    items = list(items)
    deadline = math.inf if deadline_s is None else time.monotonic() + deadline_s
    late = []

    def one(item: T) -> R:
        left = deadline - time.monotonic()
        if left <= 0:
            _COUNTS.add("past_deadline")
            late.append(item)
            return default
        return fn(item, min(timeout_s, left))

    if len(items) <= 1:
        results = [one(item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=_SIZE, thread_name_prefix="verify") as threads:
            results = list(threads.map(one, items))
    if late:
        log.warning(
            "%d of %d answers were not checked within the %.1f s batch deadline and count as wrong",
            len(late),
            len(items),
            deadline_s,
        )
    return results


def pool_size() -> int:
    return _SIZE


def worker_pids() -> list[int]:
    """Process ids of the live workers (for tests and benchmarks)."""
    return [p.pid for p in multiprocessing.active_children() if p.name == "pebble_pool_worker"]
