"""MathVista's official scoring (lupantech/MathVista, `evaluation/`, commit 53d5258).

Three steps, as the official scripts run them:
1. the query (`query.json`): a hint naming the answer type, the question with its unit,
   the lettered choices (`build_query.py`, zero-shot "solution" prompt);
2. extraction (`extract_answer.py`): the response itself if it already is an option or a
   number, else GPT reads the answer out of it with a five-example prompt;
3. normalisation and comparison (`calculate_score.py`): a letter picks its option, any
   other text picks the option nearest by edit distance; integers as `str(int(float(x)))`,
   floats as `str(round(float(x), precision))` (Python's rounding: 1.25 -> 1.2); then
   string equality with the gold answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# The extraction prompt of `evaluation/prompts/ext_ans.py`, verbatim (the judge must see the
# same examples for its extractions to be comparable with the published ones).
EXTRACTION_EXAMPLES = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""

_HINTS = {
    "multi_choice": "Please answer the question and provide the correct option letter, "
    "e.g., A, B, C, D, at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final "
    "value, e.g., 1, 2, 3, at the end.",
    1: "Please answer the question requiring a floating-point number with one decimal place "
    "and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    2: "Please answer the question requiring a floating-point number with two decimal places "
    "and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Please answer the question requiring a Python list as an answer and provide the "
    "final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}


def build_query(
    question: str,
    choices: Sequence[str] | None,
    unit: str | None,
    precision: int | None,
    question_type: str,
    answer_type: str,
) -> str:
    """The official zero-shot query (as in `query.json`): hint, question with unit, choices.

    >>> print(build_query("How long is AB?", None, "cm", None, "free_form", "integer"))
    Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
    Question: How long is AB? (Unit: cm)
    """
    if question_type == "multi_choice":
        hint = _HINTS["multi_choice"]
    elif answer_type == "float":
        hint = _HINTS.get(precision or 1, _HINTS[1])
    else:
        hint = _HINTS.get(answer_type, _HINTS["integer"])
    lines = [f"Hint: {hint}", f"Question: {question}" + (f" (Unit: {unit})" if unit else "")]
    if choices:
        lines.append("Choices:")
        lines += [f"({chr(ord('A') + i)}) {choice}" for i, choice in enumerate(choices)]
    return "\n".join(lines).strip()


def quick_extraction(response: str, problem: Mapping[str, Any]) -> str | None:
    """The official rules that answer before GPT is asked; None = ask the extractor.

    An empty response extracts to ""; a response that is an option, or (for integer and
    float answers) a plain number, is its own extraction.

    >>> quick_extraction("12", {"question_type": "free_form", "answer_type": "integer"})
    '12'
    >>> quick_extraction("It is 12.", {"question_type": "free_form", "answer_type": "integer"}) is None
    True
    """
    if response == "":
        return ""
    if problem["question_type"] == "multi_choice" and response in (problem.get("choices") or []):
        return response
    if problem["answer_type"] == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if problem["answer_type"] == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    return None


def extraction_prompt(query: str, response: str) -> str:
    """What the official pipeline sends to GPT for one response (`create_test_prompt`)."""
    return f"{EXTRACTION_EXAMPLES.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute: cost 1), two-row dynamic programme.

    >>> edit_distance("kitten", "sitting"), edit_distance("", "abc"), edit_distance("B", "B")
    (3, 3, 0)
    """
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def nearest_choice(text: str, choices: Sequence[str]) -> str:
    """The option nearest to `text` by edit distance; the first one on a tie (`get_most_similar`)."""
    distances = [edit_distance(text, choice) for choice in choices]
    return choices[distances.index(min(distances))]


_PAREN_LETTER_RE = re.compile(r"\(([a-zA-Z])\)")


def normalize_extraction(
    extraction: Any,
    choices: Sequence[str] | None,
    question_type: str,
    answer_type: str,
    precision: int | float | None,
) -> str | None:
    """`normalize_extracted_answer`: the extraction in the gold answer's form, or None.

    >>> normalize_extraction("(B) 8/11", ["3/11", "8/11"], "multi_choice", "text", None)
    '8/11'
    >>> normalize_extraction("about 3/1", ["3/11", "8/11"], "multi_choice", "text", None)
    '3/11'
    >>> normalize_extraction("1.25", None, "free_form", "float", 1)
    '1.2'
    >>> normalize_extraction("7.0", None, "free_form", "integer", None)
    '7'
    """
    if question_type == "multi_choice":
        choices = list(choices or [])
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = _PAREN_LETTER_RE.findall(text)
        if letters:
            text = letters[0].upper()
        sequence = [chr(ord("A") + i) for i in range(len(choices))]
        if text in sequence:
            return choices[sequence.index(text)]
        return nearest_choice(text, choices)
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision or 0)))
        if answer_type == "list":
            return str(extraction)
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def is_correct(prediction: str | None, answer: str) -> bool:
    """`safe_equal`: plain equality of the normalised prediction and the gold string."""
    return prediction is not None and prediction == answer


# --------------------------------------------------------------------------- without GPT
# What eval does in GPT's place when no `eval.extractor` is configured: the answer the
# response states last (box, "the answer is", last line), and for number answers the bare
# number GPT would extract from it ("12 cm" -> 12, "\frac{5}{2}" -> 2.5).

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(_NUM)
_FRAC_RE = re.compile(rf"([-+]?)\\[dt]?frac\{{({_NUM})\}}\{{({_NUM})\}}")
_SLASH_RE = re.compile(rf"({_NUM})\s*/\s*({_NUM})")
_UNIT_TAIL_RE = re.compile(rf"({_NUM})\s*(?:[a-zA-Z]+\.?(?:\^\{{?[23]\}}?|[23]?)\s*){{1,3}}")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_TEXT_CMD_RE = re.compile(r"\\(?:text|mathrm|mbox|textbf|mathbf|operatorname)\s*\{([^{}]*)\}")
_DROP = ("$", "\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^{\\circ}", "^\\circ", "°")
_DROP += ("\\%", "%", "{,}")


def bare_number(text: str, unit: str = "") -> str | None:
    """The number `text` states, as text; None if it is not one number.

    Math delimiters, `\\text{}` units, degrees, percent and the row's unit are dropped;
    fractions are divided; a number followed by a unit word keeps the number.

    >>> bare_number(r"$x = 12\\,\\text{cm}$", "cm"), bare_number(r"\\frac{5}{2}"), bare_number("1,234")
    ('12', '2.5', '1234')
    >>> bare_number(r"2\\sqrt{2}") is None, bare_number("1, 2") is None
    (True, True)
    """
    text = re.split(r"=|\\approx|≈", text)[-1]
    text = _TEXT_CMD_RE.sub(r" \1 ", text)
    for token in _DROP:
        text = text.replace(token, " ")
    if unit:
        text = re.sub(rf"(?<![A-Za-z]){re.escape(unit)}(?![A-Za-z])", " ", text)
    text = text.strip().rstrip(".").strip()
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if _NUM_RE.fullmatch(text):
        return text
    value = None
    if m := _FRAC_RE.fullmatch(text):
        if float(m.group(3)):
            value = (-1.0 if m.group(1) == "-" else 1.0) * float(m.group(2)) / float(m.group(3))
    elif (m := _SLASH_RE.fullmatch(text)) and float(m.group(2)):
        value = float(m.group(1)) / float(m.group(2))
    elif m := _UNIT_TAIL_RE.fullmatch(text):
        return m.group(1)
    return None if value is None else repr(value)
