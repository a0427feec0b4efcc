"""Answer extraction and verification, shared by the GRPO reward and eval scoring.

Training and evaluation must judge an answer the same way, or the reward optimises
something the benchmark does not measure; so both call these functions.

Extraction takes the *last* ``\\boxed{...}`` of a response (the prompt asks for the final
answer there). Verification uses ``math-verify`` (sympy) for numbers, fractions, LaTeX,
percentages and units, plus plain rules for multiple choice; the math part runs in a pool
of time-bounded worker processes with size limits on numbers (``coldstart.common.verifier``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from coldstart.common.verifier import MAX_ANSWER_CHARS
from coldstart.common.verifier import math_equivalent as _math_equivalent
from coldstart.common.verifier import squash as _squash
from coldstart.common.verifier import warm_up as warm_up  # re-exported: callers import it here

MAX_SCAN_CHARS = 20_000
"""Only this many characters at the end of a response are scanned: the answer is at the end,
and a 1-MB response must not cost more than a short one."""

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

    Returns within ``timeout_s`` for any input, judging an answer that takes longer, or
    holds a number too big to evaluate, as wrong (``coldstart.common.verifier``). Calls
    from several threads run on the verifier's workers in parallel; the first call in a
    process also waits for them to start (``warm_up()`` does that ahead). Text is only
    parsed, never evaluated as code.

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
