"""MathVision's official scoring (mathllm/MATH-V, `evaluation/evaluate.py` and `utils.py`).

Rule-based, no GPT: the response is cut down to its answer (`model_answer`: a trailing
option letter, the text after "the answer is", the last `\\boxed{}`), cleaned by
`find_math_answer` (lower case, the value after "=", LaTeX and unit words removed), and
compared by `is_equal` with the gold letter or with the gold option's text: equal strings,
else equal values rounded to 2 decimals. The official script evaluates values with
`latex2sympy` + `eval`; here a plain number or fraction is read directly and anything
else goes to math-verify (time-bounded), which agrees on the values the official scorer
can evaluate. Prose is not read for numbers: "I cannot determine ... 3 images" is wrong.
Breakdowns as the official `math_level_subject_acc`: level, subject, level x subject.
"""

from __future__ import annotations

import re

from coldstart.common.answers import is_equivalent

_FLAGS = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def model_answer(response: str) -> str:
    """`evaluate.py`'s cut of a response down to its answer, before `find_math_answer`.

    >>> model_answer("The answer is 12.")
    '12'
    >>> model_answer("Reasoning... so it is (C).")
    'c'
    """
    answer = response.strip()
    for letter in "ABCDE":
        if (
            answer.endswith(f" {letter}.")
            or answer.endswith(f" ({letter}).")
            or answer.startswith((f"{letter}\n", f"({letter})\n", f"({letter}) {letter}\n"))
        ):
            answer = letter
    if is_number(answer.split("is ")[-1].rstrip(".")):
        answer = answer.split("is ")[-1].rstrip(".")
    if "oxed{" not in answer:
        for flag in _FLAGS:
            for spelled in (flag, flag.replace("the", "The")):
                before = answer
                answer = answer.split(spelled)[-1].strip()
                if spelled in before:
                    answer = answer.split("\n")[0].split(". ")[0]
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    answer = find_math_answer(answer)
    for letter in "abcde":
        answer = answer.replace(f"({letter})", letter).replace(f"{{{letter}}}", letter)
    return answer.rstrip(".").lstrip(":").strip()


_REPLACEMENTS = (
    (" ", ""),
    ("\\,", ""),
    ("∞", "\\infty"),
    ("+\\infty", "\\infty"),
    ("\\\\", "\\"),
    ("\n", ""),
    ("\\text", ""),
    ("\\mbox", ""),
    ("bmatrix", "pmatrix"),
    ("\\left", ""),
    ("\\right", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("{m}^3", ""),
    ("m^3", ""),
    ("{units}", ""),
    ("units", ""),
    ("{km}", ""),
    ("km", ""),
)
_BOX_CONTENT_RE = re.compile(r"oxed{(.*)}", re.DOTALL)


def find_math_answer(text: str) -> str:
    """`utils.find_math_answer`: the (lower-cased) content of the last box, cleaned.

    >>> find_math_answer(r"so \\boxed{x = 12\\text{ units}}")
    '12'
    """
    text = text.lower().replace("{}", "")
    boxed = _BOX_CONTENT_RE.findall(text)
    answer = boxed[-1] if boxed else text
    if "}" in answer and ("{" not in answer or answer.find("}") < answer.find("{")):
        answer = answer.split("}")[0]
    answer = answer.split("=")[-1].split("\\approx")[-1]
    for old, new in _REPLACEMENTS:
        answer = answer.replace(old, new)
    return _strip_string(answer)


def _strip_string(text: str) -> str:
    """`utils._strip_string` (the MATH normaliser): delimiters, units, `0.5` -> `\\frac{1}{2}`."""
    for old, new in (
        ("\n", ""),
        ("\\!", ""),
        ("\\\\", "\\"),
        ("tfrac", "frac"),
        ("dfrac", "frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\$", ""),
        ("$", ""),
    ):
        text = text.replace(old, new)
    text = text.split("\\text{ ")[0]
    text = text.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    if len(text.split("=")) == 2:
        text = text.split("=")[-1]
    if len(text.split("\\approx")) == 2:
        text = text.split("\\approx")[-1]
    text = text.replace(" ", "")
    if text == "0.5":
        text = "\\frac{1}{2}"
    if re.fullmatch(r"-?\d+/\d+", text):
        numerator, denominator = text.split("/")
        text = f"\\frac{{{numerator}}}{{{denominator}}}"
    return text


_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}")


def _value(text: str) -> float | None:
    """A plain number or `\\frac{a}{b}`; None for anything that needs a parser."""
    if is_number(text):
        return float(text)
    if match := _FRAC_RE.fullmatch(text):
        denominator = float(match.group(3))
        if denominator:
            sign = -1.0 if match.group(1) else 1.0
            return sign * float(match.group(2)) / denominator
    return None


def is_equal(answer: str, gold: str, timeout_s: float = 1.0) -> bool:
    """`utils.is_equal`: equal strings (any case), else equal values at 2 decimals.

    >>> is_equal("0.333", r"\\frac{1}{3}"), is_equal("b", "B"), is_equal("", "3")
    (True, True, False)
    """
    answer, gold = answer.lower(), gold.lower()
    if not answer.replace(" ", "") or not gold.replace(" ", ""):
        return False
    if answer.strip() == gold.strip():
        return True
    a, g = _value(answer), _value(gold)
    if a is not None and g is not None:
        return round(a, 2) == round(g, 2)
    if any(len(t.strip()) == 1 and t.strip().isalpha() for t in (answer, gold)):
        return False  # an option letter equals only itself (compared above)
    answer, gold = answer.replace("$", ""), gold.replace("$", "")
    if _has_symbols(answer) or _has_symbols(gold):
        return False  # the official `eval` of a value with free symbols (words, units) fails
    return is_equivalent(answer, gold, timeout_s=timeout_s)


_COMMAND_RE = re.compile(r"\\[a-zA-Z]+")
_LETTER_RE = re.compile(r"[a-zA-Z]")


def _has_symbols(text: str) -> bool:
    """Letters outside LaTeX commands ("8\\mathrm{~kg}", "youneedto..."): not a plain value."""
    return bool(_LETTER_RE.search(_COMMAND_RE.sub(" ", text)))


def is_correct(response: str, gold: str, choices: list[str] | None, timeout_s: float) -> bool:
    """Official verdict: the answer equals the gold letter or the gold option's text."""
    answer = model_answer(response)
    gold_value = ""
    if choices and len(gold) == 1 and "A" <= gold <= "Z" and ord(gold) - 65 < len(choices):
        gold_value = choices[ord(gold) - 65]
    return is_equal(gold, answer, timeout_s) or is_equal(gold_value, answer, timeout_s)
