"""Answer extraction and verification, shared by the GRPO reward and eval scoring.

Training and evaluation must judge an answer the same way, or the reward optimises
something the benchmark does not measure; so both call these functions.

Extraction takes the *last* ``\\boxed{...}`` of a response (the prompt asks for the final
answer there). Verification uses ``math-verify`` (sympy) for numbers, fractions, LaTeX,
percentages and units, plus plain rules for multiple choice.

Time bound: sympy can run for ever on model output (``9^{9^{9^9}}``,
``\\binom{10^8}{5 \\cdot 10^7}``), and math-verify's own timeout is ``signal.alarm``: it
cannot interrupt C code (big-int ``pow``) and refuses to run outside the main thread (eval
uses thread pools, GRPO rewards may run anywhere). So every sympy call runs in one
persistent worker process that the caller waits on for at most ``timeout_s``; on overrun
the worker is killed, a replacement is started, and the answer counts as wrong. Cheap
guards (length caps, exponent towers, huge factorials and exponents, deep nesting) reject
most bombs before they reach the worker, and plain strings / plain numbers are compared
without it.

The worker is a fresh interpreter started with ``subprocess`` that imports only this
module and talks over a ``multiprocessing`` connection. Not ``multiprocessing``'s spawn
context: that re-runs the caller's ``__main__`` in the child (breaking scripts without an
``if __name__ == "__main__"`` guard, and importing torch etc. into the worker), and it
refuses to start from daemonic processes such as ``multiprocessing.Pool`` workers. Not
fork: forking a process that holds torch/CUDA state or threads is unsafe. The worker is
killed at exit (atexit) and exits by itself when its parent's end of the socket closes.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing.connection
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

MAX_SCAN_CHARS = 20_000
"""Only this many characters at the end of a response are scanned: the answer is at the end,
and a 1-MB response must not cost more than a short one."""

MAX_ANSWER_CHARS = 1_000
"""An extracted answer longer than this is judged wrong without parsing."""

MAX_BRACE_DEPTH = 20
"""Deeper nesting is judged wrong without parsing (the LaTeX parser recurses per level)."""

STARTUP_TIMEOUT_S = 60.0
"""How long a call waits for a (re)started worker to import sympy; not part of ``timeout_s``."""

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DEFAULT_N_CHOICES = 5  # without a choices list, a letter answer is one of A-E

# --------------------------------------------------------------------------------------
# extraction


class Boxed(NamedTuple):
    """One complete ``\\boxed{...}``: ``text[start:end]`` is the whole box."""

    start: int
    end: int
    content: str


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b(\s*)")
_BARE_BOX_TOKEN_RE = re.compile(r"[^\s$]+")  # "\boxed 5": the token after the space
_BRACE_OR_ESCAPE_RE = re.compile(r"\\.|[{}]", re.DOTALL)  # "\{" and "\}" are not braces


def _matching_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``; None if it never closes."""
    depth = 0
    for match in _BRACE_OR_ESCAPE_RE.finditer(text, open_idx):
        token = match.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return match.start()
    return None


def find_boxed(text: str) -> list[Boxed]:
    """All complete top-level boxes (``\\boxed{}``, ``\\boxed x``, ``\\fbox{}``), in order.

    Boxes nested inside another box are part of the outer box's content. Scanning stops at
    a box that never closes (a truncated generation).

    >>> [b.content for b in find_boxed(r"\\boxed{1} then \\boxed{\\frac{1}{2}} and \\boxed 3$")]
    ['1', '\\\\frac{1}{2}', '3']
    """
    boxes: list[Boxed] = []
    pos = 0
    while match := _BOX_RE.search(text, pos):
        if text.startswith("{", match.end()):
            close = _matching_brace(text, match.end())
            if close is None:
                break
            content = text[match.end() + 1 : close].strip()
            boxes.append(Boxed(match.start(), close + 1, content))
            pos = close + 1
        elif match.group(1) and (token := _BARE_BOX_TOKEN_RE.match(text, match.end())):
            boxes.append(Boxed(match.start(), token.end(), token.group()))
            pos = token.end()
        else:
            pos = match.end()
    return boxes


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` of ``text``; None if there is none.

    The final answer is the last box, as the prompt asks. If the last box never closes
    (the generation was truncated) the answer is None rather than an earlier box the model
    went on to revise. Only the last ``MAX_SCAN_CHARS`` characters are scanned.

    >>> extract_boxed(r"first \\boxed{1}, finally \\boxed{x^{2}+1}.")
    'x^{2}+1'
    >>> extract_boxed(r"\\boxed{} is empty") == ""
    True
    >>> extract_boxed("no box") is None, extract_boxed(r"\\boxed{1} \\boxed{2") is None
    (True, True)
    """
    tail = text[-MAX_SCAN_CHARS:]
    boxes = find_boxed(tail)
    after_last = boxes[-1].end if boxes else 0
    if not boxes or _BOX_RE.search(tail, after_last):
        return None
    return boxes[-1].content


_ANSWER_IS_RE = re.compile(
    r"answer\s*(?:is|:)\s*:?\s*(.+?)\s*(?:\.(?:\s|$)|$)", re.IGNORECASE | re.MULTILINE
)
_WRAPPERS = (("$$", "$$"), ("$", "$"), (r"\(", r"\)"), (r"\[", r"\]"), ("**", "**"))
_TEXT_WRAPPER_RE = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{")
_GOLD_LETTER_RE = re.compile(r"\(?([A-Z])\)?")  # gold letters are upper case, maybe "(B)"
_CHOICE_LETTER_RE = re.compile(
    r"^(?:(?:option|choice)\s*)?(?:\((?P<a>[A-Z])\)|(?P<b>[A-Z])(?:[.):]|(?=\s)|$))(?:\s.*)?$",
    re.IGNORECASE | re.DOTALL,
)


def _clean(text: str) -> str:
    """Strip what surrounds an answer but is not part of it: spaces, ``$``, ``\\(\\)``,
    ``**``, a ``\\text{}`` wrapper, a trailing period."""
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        for left, right in _WRAPPERS:
            if (
                len(text) > len(left) + len(right)
                and text.startswith(left)
                and text.endswith(right)
            ):
                text, changed = text[len(left) : -len(right)].strip(), True
        if (m := _TEXT_WRAPPER_RE.match(text)) and _matching_brace(text, m.end() - 1) == len(
            text
        ) - 1:
            text, changed = text[m.end() : -1].strip(), True
        if text.endswith(".") and not text[:-1].endswith("\\"):
            text, changed = text[:-1].rstrip(), True
    return text


def choice_letter(text: str, n_choices: int = _DEFAULT_N_CHOICES) -> str | None:
    """The option letter ``text`` names ("B", "(B)", "B.", "b)", "(B) 12", "option B"); else None.

    Only the first ``n_choices`` letters count.

    >>> choice_letter("(B)"), choice_letter("C. 12"), choice_letter("F"), choice_letter("Bob")
    ('B', 'C', None, None)
    """
    match = _CHOICE_LETTER_RE.match(_clean(text))
    if match is None:
        return None
    letter = (match.group("a") or match.group("b")).upper()
    return letter if _LETTERS.index(letter) < n_choices else None


def extract_answer(
    response: str, choices: list[str] | None = None, *, boxed_only: bool = False
) -> str | None:
    """The answer a response gives, or None.

    Order: the last ``\\boxed{}`` (an empty box counts as no answer). Unless ``boxed_only``
    (GRPO: the reward must only credit the format it asks for), eval falls back to answers
    given outside a box, the last match wins:
      1. "... answer is X" / "Answer: X" (up to the end of the sentence or line),
      2. the last non-empty line.
    With ``choices``, an answer naming an option ("(B)", "B. 12") is returned as its letter.

    >>> extract_answer(r"So \\boxed{(B)}.", choices=["1", "2"])
    'B'
    >>> extract_answer("Thus the final answer is $\\\\frac{1}{2}$. Done.")
    '\\\\frac{1}{2}'
    >>> extract_answer("The answer is 3.", boxed_only=True) is None
    True
    >>> extract_answer(r"\\boxed{8} then \\boxed{9") is None, extract_answer(r"\\boxed{}") is None
    (True, True)
    """
    boxed = extract_boxed(response)
    if boxed:
        answer: str | None = boxed
    elif boxed_only:
        return None
    else:
        answer = _fallback_answer(response[-MAX_SCAN_CHARS:])
    if answer is None or (not boxed and _BOX_RE.search(answer)):
        return None  # an empty or unclosed box is no answer, not the text around it
    answer = _clean(answer)
    if choices and (letter := choice_letter(answer, len(choices))):
        return letter
    return answer or None


def _fallback_answer(text: str) -> str | None:
    """An answer stated outside a box: the last "answer is X", else the last non-empty line."""
    stated = _ANSWER_IS_RE.findall(text)
    if stated:
        return stated[-1]
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


# --------------------------------------------------------------------------------------
# verification


def is_equivalent(
    pred: str | None, gold: str, *, choices: list[str] | None = None, timeout_s: float = 1.0
) -> bool:
    """Whether the predicted answer means the gold answer.

    Math answers: equal strings, or equal under math-verify (1/2 == 0.5 == \\frac{1}{2},
    30 == 30^\\circ == "30 degrees", 5 == "5 cm", 50\\% == 0.5, x+1 == 1+x). Multiple choice
    (gold is a letter, or with ``choices`` the text of an option): the pred names the same
    letter ("B", "(B)", "B."), or, with ``choices``, is the gold option's text or is
    math-equivalent to it.

    Returns within ``timeout_s`` for any input (see the module docstring), judging an answer
    that takes longer as wrong. Calls from several threads share one worker and queue for
    it. The first call in a process, and the first after an overrun, also wait for the
    worker to start (bounded by ``STARTUP_TIMEOUT_S``); ``warm_up()`` does that ahead.
    Text is only parsed, never evaluated as code.

    >>> is_equivalent("0.5", "1/2"), is_equivalent("(C)", "C"), is_equivalent("3", "4")
    (True, True, False)
    >>> is_equivalent(r"\\frac{\\sqrt{3}}{2}", r"\\sqrt{3}/2")
    True
    """
    if not pred or not gold or len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    pred, gold = _clean(pred), _clean(gold)
    if not pred or not gold:
        return False
    gold_indices, gold_is_letter = _gold_choice_indices(gold, choices)
    if gold_indices:
        return _choice_equivalent(pred, gold_indices, gold_is_letter, choices, timeout_s)
    return _math_equivalent(pred, gold, timeout_s)


def _gold_choice_indices(gold: str, choices: list[str] | None) -> tuple[set[int], bool]:
    """The options the gold answer names, and whether it named them by letter.

    A bare letter names one option; an option's text names every option with that text
    (MathVista pid 781 lists "18" twice: either letter is right).
    """
    match = _GOLD_LETTER_RE.fullmatch(gold)
    if match and _LETTERS.index(match.group(1)) < _n_choices(choices):
        return {_LETTERS.index(match.group(1))}, True
    return _option_indices(gold, choices), False


def _n_choices(choices: list[str] | None) -> int:
    return len(choices) if choices else _DEFAULT_N_CHOICES


def _option_indices(text: str, choices: list[str] | None, *, exact: bool = False) -> set[int]:
    """Indices of the options whose text is ``text`` (ignoring spaces and wrappers; and case
    unless ``exact``)."""
    key = _squash(text) if exact else _squash(text).lower()
    found = set()
    for index, option in enumerate(choices or []):
        squashed = _squash(_clean(option))
        if (squashed if exact else squashed.lower()) == key:
            found.add(index)
    return found


def _pred_choice_indices(pred: str, gold_is_letter: bool, choices: list[str] | None) -> set[int]:
    """The options a multiple-choice pred names: by letter or by text, ambiguity resolved by
    how the gold is written. A gold letter (We-Math, MathVision) reads a bare letter as a
    letter, even where option texts are letters; a gold option text (MathVista) reads the
    exact text of an option first ("(b)" among options "(c)", "(b)" is that option, "(B)"
    is letter B)."""
    letter = choice_letter(pred, _n_choices(choices))
    by_letter = {_LETTERS.index(letter)} if letter else set()
    if gold_is_letter and by_letter and _LETTER_ONLY_RE.match(_clean(pred)):
        return by_letter
    exact = _option_indices(pred, choices, exact=True)
    if exact:
        return exact
    if gold_is_letter:
        return _option_indices(pred, choices) or by_letter
    return by_letter or _option_indices(pred, choices)


_LETTER_ONLY_RE = re.compile(
    r"^(?:(?:option|choice)\s*)?(?:\([A-Z]\)(?:\s.*)?|[A-Z][.):]?)$", re.IGNORECASE | re.DOTALL
)  # "B", "(B)", "B.", "option B", "(B) 12"; not "A Right Angle"


def _choice_equivalent(
    pred: str,
    gold_indices: set[int],
    gold_is_letter: bool,
    choices: list[str] | None,
    timeout_s: float,
) -> bool:
    """A multiple-choice pred matches if it names a gold option by text or letter, or (with
    ``choices``) is math-equivalent to a gold option's text."""
    pred_indices = _pred_choice_indices(pred, gold_is_letter, choices)
    if pred_indices:
        return bool(pred_indices & gold_indices)
    return bool(choices) and any(
        _math_equivalent(pred, _clean(choices[index]), timeout_s) for index in sorted(gold_indices)
    )


def _math_equivalent(pred: str, gold: str, timeout_s: float) -> bool:
    """Equality of math answers: fast paths in this process, sympy in the worker."""
    if not pred or not gold:
        return False
    if _squash(pred) == _squash(gold):
        return True
    numbers = _compare_plain_numbers(pred, gold)
    if numbers is not None:
        return numbers
    if _is_explosive(pred) or _is_explosive(gold):
        return False
    finished, result = _VERIFIER.call(_verify_with_sympy, (pred, gold), timeout_s)
    return finished and result is True


def _squash(text: str) -> str:
    return "".join(text.split())


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


_TOWER_RES = (
    re.compile(r"\^\s*\{[^{}]*\^"),  # 9^{9^{...}}
    re.compile(r"\^\s*\([^()]*\^"),  # 9^(9^9)
    re.compile(r"\^\s*[\w.]+\s*\^"),  # 9^9^9
)
_HUGE_EXPONENT_RE = re.compile(r"\^\s*[{(]?\s*[-+]?\d{6,}")  # 10^{1000000}
_HUGE_FACTORIAL_RE = re.compile(r"\d{5,}\s*!")  # 100000!


def _is_explosive(text: str) -> bool:
    """Cheap syntactic guard against answers whose evaluation can take unbounded time.

    Catches exponent towers, exponents of a million or more, factorials of 10^4 or more, a
    factorial next to a power or another factorial ((10^{10})!, ((10!)!)!), and deep
    nesting. Legitimate answers rarely look like this; anything it misses is still cut
    off by the worker's timeout, this just avoids paying a worker restart for it.
    """
    text = text.replace("**", "^")
    if any(pattern.search(text) for pattern in _TOWER_RES) or _HUGE_EXPONENT_RE.search(text):
        return True
    if "!" in text and (_HUGE_FACTORIAL_RE.search(text) or "^" in text or text.count("!") > 1):
        return True
    return _brace_depth(text) > MAX_BRACE_DEPTH


def _brace_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "{(":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})":
            depth -= 1
    return deepest


def _verify_with_sympy(pred: str, gold: str) -> bool:
    """math-verify on two extracted answers. Runs in the worker, so math-verify's own
    signal-based timeouts are off: the parent enforces the bound."""
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


# --------------------------------------------------------------------------------------
# the worker process

_READY = "ready"
_WORKER_COMMAND = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    f"from {__name__} import _worker_main; _worker_main(int(sys.argv[2]))"
)


def _worker_main(fd: int) -> None:
    """Entry point of the worker subprocess: serve requests on the inherited socket ``fd``."""
    _serve(multiprocessing.connection.Connection(fd))


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """Worker loop: run ``fn(*args)`` per request, reply with the result (None on error)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings
    _verify_with_sympy("1/2", "0.5")  # import sympy and fill its caches before saying ready
    conn.send(_READY)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            result = fn(*args)
        except Exception:
            result = None
        conn.send(result)


class _Verifier:
    """One persistent worker subprocess; killed and replaced when a call overruns its timeout.

    The lock serialises threads; a forked child of this process starts its own worker
    rather than sharing the parent's socket.
    """

    def __init__(self) -> None:
        self._reset()
        atexit.register(self.close)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._conn: Any = None
        self._ready = False

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[bool, Any]:
        """``(True, fn(*args))`` from the worker, or ``(False, None)`` after ``timeout_s``.

        ``fn`` must be importable by name (a module-level function) to reach the worker.
        """
        with self._lock:
            self._ensure_ready()
            try:
                self._conn.send((fn, args))
                if self._conn.poll(max(timeout_s, 0.0)):
                    return True, self._conn.recv()
            except (EOFError, OSError):  # the worker died (killed from outside, crashed)
                pass
            self._kill()
            self._start()  # the replacement imports sympy while the caller moves on
            return False, None

    def warm_up(self) -> None:
        with self._lock:
            self._ensure_ready()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _start(self) -> None:
        parent_conn, child_conn = multiprocessing.Pipe()  # a socket pair on POSIX
        child_fd = child_conn.fileno()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_COMMAND, json.dumps(sys.path), str(child_fd)],
            pass_fds=(child_fd,),
            stdin=subprocess.DEVNULL,
        )
        child_conn.close()
        self._conn, self._ready = parent_conn, False

    def _ensure_ready(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._kill()  # died between calls (OOM killer, kill from outside): replace it
        if self._process is None:
            self._start()
        if self._ready:
            return
        try:
            ready = self._conn.poll(STARTUP_TIMEOUT_S) and self._conn.recv() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._kill()
            raise RuntimeError(
                f"the answer-verifier worker did not start within {STARTUP_TIMEOUT_S:.0f} s "
                "(is math-verify installed? see its traceback above)"
            )
        self._ready = True

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)
            self._conn.close()
        self._process, self._conn, self._ready = None, None, False


_VERIFIER = _Verifier()


def warm_up() -> None:
    """Start the verification worker now, so the first ``is_equivalent`` call does not wait
    for it (call before timing-sensitive loops; optional)."""
    _VERIFIER.warm_up()
