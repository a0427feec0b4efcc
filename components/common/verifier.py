"""Math verification with a time bound: a pool of pre-warmed worker processes running math-verify.

Why processes: sympy can run for ever on model output, and math-verify's own timeout is
``signal.alarm``, which cannot interrupt C code (big-int ``pow``) and refuses to run outside
the main thread (eval uses thread pools, GRPO rewards may run anywhere). So each check runs
in a worker that the caller waits on for at most ``timeout_s``; on overrun the worker is
killed and the answer counts as wrong (``Verdict.TIMEOUT``, counted in ``counts()``).

Why a pool: several checks run at once (``map_within_deadline`` spreads a batch over the
workers, one per usable CPU up to ``MAX_WORKERS``), and a killed worker is replaced within
milliseconds: workers are forked from a *zygote*, a fresh interpreter that imported sympy and
math-verify once and warmed their caches on typical answers. Importing them takes 2-3 s, a
fork a few ms, so ten bombs in a batch cost ten forks, not ten imports. A spawner thread
makes the replacements while callers go on with the remaining workers.

Why not ``multiprocessing``'s spawn or forkserver: both re-run the caller's ``__main__`` in the
child (breaking scripts without an ``if __name__ == "__main__"`` guard, and importing torch
into the worker), and neither starts from daemonic processes such as Pool workers. Not fork
of the caller: forking a process that holds torch/CUDA state or threads is unsafe. The zygote
is a plain subprocess that imports only this module and holds no threads, so forking it is
safe. Every process here ignores Ctrl-C (the caller's), exits when the caller's end of its
socket closes, and a worker also dies by its own alarm shortly after its time bound, so
nothing outlives a killed caller for long.

Before a worker evaluates anything, ``answer_bounds`` refuses answers with numbers too big to
evaluate (``Verdict.TOO_BIG``); cheap checks (equal strings, plain numbers, length, nesting)
are decided here without a worker.
"""

from __future__ import annotations

import atexit
import enum
import functools
import json
import logging
import math
import multiprocessing.connection
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from multiprocessing import reduction
from typing import Any, NamedTuple, TypeVar

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1_000
"""An extracted answer longer than this is judged wrong without parsing."""

MAX_BRACE_DEPTH = 20
"""Deeper nesting is judged wrong without parsing (the LaTeX parser recurses per level)."""

STARTUP_TIMEOUT_S = 60.0
"""How long a call waits for the pool to start (import sympy); not part of ``timeout_s``."""

MAX_WORKERS = 8
"""Workers per process at most: more rarely helps a batch and each holds ~100 MB."""

HARD_LIMIT_MARGIN_S = 1.0
"""A worker kills itself this long after its time bound if its caller did not (caller gone)."""

Connection = multiprocessing.connection.Connection
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
    outcome, result = _POOL.run(check_pair, (pred, gold), timeout_s)
    if outcome == "timeout":
        return Verdict.TIMEOUT
    if outcome == "died":
        log.warning("an answer-verifier worker died checking %r against %r", pred[:80], gold[:80])
        return Verdict.ERROR
    verdict, detail = result
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

    from components.common.answer_bounds import too_big_reason

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
"""Typical answers checked once in the zygote: its forks start with sympy's code paths and
caches warm (a fork whose first check is a polynomial otherwise spends 0.3 s on it)."""


def _warm_up_checks() -> None:
    for pred, gold in _WARM_UP_PAIRS:
        check_pair(pred, gold)


def _zygote_main(fd: int) -> None:
    """Entry point of the zygote: import and warm up, then fork one worker per handle received."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings
    _warm_up_checks()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited workers
    conn.send(_READY)
    while True:
        try:
            handle = reduction.recv_handle(conn)
        except (EOFError, OSError):  # the caller is gone
            return
        pid = os.fork()
        if pid == 0:
            conn.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _serve(Connection(handle))
            finally:
                os._exit(0)
        os.close(handle)
        conn.send(pid)


def _serve(conn: Connection) -> None:
    """Worker loop: ``fn(*args)`` per request, replying ``("ok", result)`` or ``("raised", text)``.

    Each request carries a hard limit: SIGALRM (default action: terminate) ends a worker
    whose caller vanished without killing it.
    """
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    conn.send(_READY)
    while True:
        try:
            fn, args, hard_limit_s = conn.recv()
        except (EOFError, OSError):  # the caller is gone
            return
        signal.setitimer(signal.ITIMER_REAL, hard_limit_s)
        try:
            reply = ("ok", fn(*args))
        except Exception as exc:  # sent to the caller, which raises it there
            reply = ("raised", f"{type(exc).__name__}: {exc}")
        signal.setitimer(signal.ITIMER_REAL, 0)
        conn.send(reply)


# --------------------------------------------------------------------------- the pool

_READY = "ready"
_ZYGOTE_COMMAND = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    f"from {__name__} import _zygote_main; _zygote_main(int(sys.argv[2]))"
)


class WorkerError(RuntimeError):
    """The function run in a worker raised; the message is its exception."""


class _Worker(NamedTuple):
    pid: int
    conn: Connection
    pidfd: int | None  # signals reach this process even if its pid is reused


def default_size() -> int:
    """One worker per CPU this process may use, at most MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


class _Pool:
    """Workers forked from one zygote; a spawner thread starts the zygote and replaces workers.

    Callers take an idle worker, send one request, and either get the reply within the time
    bound (the worker goes back to the idle list) or kill the worker (the spawner forks a
    replacement). A spawner failure (no math-verify, zygote crash) is raised in every caller
    waiting at that moment; the next call tries again.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0  # idle + busy workers
        self._wanted = 0  # replacements the spawner still has to make
        self._failure: tuple[int, str] = (0, "")  # (how many so far, the last message)
        self._closed = False
        self._spawner: threading.Thread | None = None
        self._zygote: subprocess.Popen | None = None
        self._zygote_conn: Connection | None = None
        self.stats = Counter(interpreter_starts=0, worker_forks=0)

    # -- callers

    def run(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[str, Any]:
        """``("ok", fn(*args))``, ``("timeout", None)`` or ``("died", None)``; WorkerError if fn raised.

        ``timeout_s`` bounds the time on workers, not the wait for one. A worker that dies
        under a request (killed from outside) is replaced and the request sent again, within
        what is left of ``timeout_s``, to at most ``size + 1`` workers.
        """
        spent, outcome = 0.0, "timeout"
        for _attempt in range(self.size + 1):
            left = timeout_s - spent
            if left <= 0:
                return "timeout", None
            worker = self._acquire()
            start = time.monotonic()
            try:
                worker.conn.send((fn, args, left + HARD_LIMIT_MARGIN_S))
                if worker.conn.poll(left):
                    status, result = worker.conn.recv()
                    self._release(worker)
                    if status == "raised":
                        raise WorkerError(f"{getattr(fn, '__name__', fn)} raised {result}")
                    return "ok", result
                outcome = "timeout"
            except (EOFError, OSError):  # killed from outside, crashed
                outcome = "died"
            spent += time.monotonic() - start
            self._discard(worker)
            if outcome == "timeout":
                break
        return outcome, None

    def warm_up(self) -> None:
        """Block until every worker is up (or raise why they cannot start)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with self._cond:
            failures = self._request_workers()
            while self._live < self.size:
                self._wait(failures, deadline)

    def worker_pids(self) -> list[int]:
        with self._cond:
            return [w.pid for w in self._idle]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            _kill(worker)
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait(timeout=5)
            self._zygote_conn.close()

    def _acquire(self) -> _Worker:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with self._cond:
            failures = self._request_workers()
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if not worker.conn.poll(0):  # an idle worker that can be read is dead (EOF)
                        return worker
                    self._drop(worker)
                self._wait(failures, deadline)

    def _wait(self, failures: int, deadline: float) -> None:
        """Wait for a change; raise if the spawner failed since ``failures`` or time ran out."""
        self._cond.wait(timeout=max(deadline - time.monotonic(), 0.0))
        if self._failure[0] != failures:
            raise RuntimeError(f"the answer-verifier workers could not start: {self._failure[1]}")
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"no answer-verifier worker became free within {STARTUP_TIMEOUT_S:.0f} s"
            )

    def _request_workers(self) -> int:
        """(Under the lock) ask the spawner for what the pool lacks; the failure count now."""
        if self._closed:
            raise RuntimeError("the answer-verifier pool is closed (the process is exiting)")
        self._wanted = self.size - self._live
        if self._wanted and self._spawner is None:
            self._spawner = threading.Thread(target=self._spawn_loop, name="verifier", daemon=True)
            self._spawner.start()
        self._cond.notify_all()
        return self._failure[0]

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._idle.append(worker)
            self._cond.notify_all()

    def _discard(self, worker: _Worker) -> None:
        _kill(worker)
        with self._cond:
            self._live -= 1
            self._wanted += 1
            self._cond.notify_all()

    def _drop(self, worker: _Worker) -> None:
        """(Under the lock) forget a dead idle worker and ask for a replacement."""
        _kill(worker)
        self._live -= 1
        self._wanted += 1
        self._cond.notify_all()

    # -- the spawner thread

    def _spawn_loop(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                worker = self._fork_worker()
            except Exception as exc:  # raised in every waiting caller (see _wait)
                log.error("answer-verifier workers could not start: %s", exc)
                with self._cond:
                    self._failure = (self._failure[0] + 1, str(exc))
                    self._wanted = 0
                    self._cond.notify_all()
                continue
            with self._cond:
                if self._closed:
                    _kill(worker)
                    return
                self._wanted = max(self._wanted - 1, 0)
                self._live += 1
                self._idle.append(worker)
                self._cond.notify_all()

    def _fork_worker(self) -> _Worker:
        if self._zygote is None or self._zygote.poll() is not None:
            self._start_zygote()
        ours, theirs = multiprocessing.Pipe()  # a socket pair: its fd travels to the zygote
        try:
            reduction.send_handle(self._zygote_conn, theirs.fileno(), self._zygote.pid)
            if not self._zygote_conn.poll(STARTUP_TIMEOUT_S):
                raise RuntimeError("the verifier zygote did not answer a fork request")
            pid = self._zygote_conn.recv()
        except (EOFError, OSError) as exc:
            self._stop_zygote()
            raise RuntimeError(f"the verifier zygote died ({exc!r})") from exc
        finally:
            theirs.close()
        pidfd = _open_pidfd(pid)
        worker = _Worker(pid, ours, pidfd)
        if not (ours.poll(STARTUP_TIMEOUT_S) and ours.recv() == _READY):
            _kill(worker)
            raise RuntimeError("a forked verifier worker did not start")
        self.stats["worker_forks"] += 1
        return worker

    def _start_zygote(self) -> None:
        self._stop_zygote()
        parent_conn, child_conn = multiprocessing.Pipe()
        child_fd = child_conn.fileno()
        self._zygote = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE_COMMAND, json.dumps(sys.path), str(child_fd)],
            pass_fds=(child_fd,),
            stdin=subprocess.DEVNULL,
        )
        child_conn.close()
        self._zygote_conn = parent_conn
        self.stats["interpreter_starts"] += 1
        try:
            ready = parent_conn.poll(STARTUP_TIMEOUT_S) and parent_conn.recv() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._stop_zygote()
            raise RuntimeError(
                f"the verifier process did not start within {STARTUP_TIMEOUT_S:.0f} s "
                "(is math-verify installed? see its traceback above)"
            )

    def _stop_zygote(self) -> None:
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait(timeout=5)
            self._zygote_conn.close()
        self._zygote, self._zygote_conn = None, None


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` where the OS has them (Linux >= 5.3), else None (plain pids)."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:  # an older kernel: kill by pid
        log.debug("no pidfd for the verifier worker (%s); using its pid", exc)
        return None


def _kill(worker: _Worker) -> None:
    """SIGKILL a worker (the zygote reaps it) and close our ends."""
    try:
        if worker.pidfd is not None:
            signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
        else:
            os.kill(worker.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already exited: nothing to kill
        pass
    if worker.pidfd is not None:
        os.close(worker.pidfd)
    worker.conn.close()


_POOL = _Pool(default_size())


def _new_pool_in_child() -> None:
    """A forked child of the caller gets its own pool (the parent's workers stay the parent's)."""
    global _POOL
    _POOL = _Pool(_POOL.size)


def _close_pool() -> None:
    _POOL.close()


atexit.register(_close_pool)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pool_in_child)


# --------------------------------------------------------------------------- public helpers


def warm_up() -> None:
    """Start the verification workers now, so the first check does not wait for them (call
    before timing-sensitive loops; optional)."""
    _POOL.warm_up()


def run_in_worker(fn: Callable[..., R], args: tuple, timeout_s: float) -> tuple[bool, R | None]:
    """``(True, fn(*args))`` from a worker, or ``(False, None)`` after ``timeout_s`` (the
    worker is replaced). ``fn`` must be importable by name. WorkerError if it raised."""
    outcome, result = _POOL.run(fn, args, timeout_s)
    if outcome == "died":
        log.warning("a verifier worker died running %s", getattr(fn, "__name__", fn))
    return outcome == "ok", result


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
        with ThreadPoolExecutor(max_workers=_POOL.size, thread_name_prefix="verify") as pool:
            results = list(pool.map(one, items))
    if late:
        log.warning(
            "%d of %d answers were not checked within the %.1f s batch deadline and count as wrong",
            len(late),
            len(items),
            deadline_s,
        )
    return results


def pool_size() -> int:
    return _POOL.size


def pool_stats() -> dict[str, int]:
    """``interpreter_starts`` (zygotes started: each imports sympy, 2-3 s) and ``worker_forks``."""
    return dict(_POOL.stats)


def worker_pids() -> list[int]:
    """Process ids of the idle workers (for tests and debugging)."""
    return _POOL.worker_pids()
