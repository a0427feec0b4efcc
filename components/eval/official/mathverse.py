"""MathVerse's official scoring (ZrrSkywalker/MathVerse, `evaluation/`).

Two GPT calls per response: `extract_answer_s1.py` pulls the answer out with a six-example
prompt, `score_answer_s2.py` asks whether that answer and the gold are "consistent"
(0 / 1). The overall accuracy is over every instance of all five problem versions (Text
Dominant, Text Lite, Vision Intensive, Vision Dominant, Vision Only).

The question the judge sees is `question_for_eval` where the mirror has it (the published
testmini's column, used by VLMEvalKit): Vision Only rows have an empty `question`, their
options live in the image and, transcribed, in `question_for_eval`.
"""

from __future__ import annotations

import re

# `evaluation/prompts.py` (`demo_prompt_extract`, `demo_prompt_score`), verbatim.
EXTRACTION_EXAMPLES = """
I am providing you a response from a model to a math problem, termed 'Model Response'. You should extract the answer from the response as 'Extracted Answer'. Directly output the extracted answer with no explanation.

1.
Model response: 'Rounded to two decimal places, the perimeter of the sector is approximately:\n\n(-2, 1)'
Extracted Answer: (-2, 1)

2.
Model response: 'at those points.\n\nTherefore, the correct option that represents the meaning of the intersection points of the graphs is:\n\nD. They give the solutions to the equation $f(t)=g(t)$.",'
Extracted Answer: D

3.
Model response: ' at 1 (there's a closed circle at y = 1), the range in interval notation is \\((-4, 1]\\).\n\nFinal values:\nDomain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)'
Extracted Answer: Domain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)

4.
Model response: 'As it stands, I cannot provide the correct option letter because there isn't enough information to solve for 'y'.'
Extracted Answer: null

5.
Model response: 'Given that AB = 17.6 meters, we can now substitute into the equation:\n\nd = 17.6 / cos(38\u00b0)\n\nTherefore, to one decimal place, the distance d between Ned and Bart is approximately 22.3 meters.'
Extracted answer: 22.3

6.
Model response:  have all the coefficients for the quadratic function:\n\\( f(x) = ax^2 + bx + c \\)\n\\( f(x) = -1x^2 - 2x + 1 \\)\n\nTherefore, the equation for the graphed function \\( f \\) is:\n\\( f(x) = -x^2 - 2x + 1 \\)"'
Extracted answer: f(x) = -x^2 - 2x + 1

7.
"""

JUDGE_EXAMPLES = """
Below are two answers to a math question. Question is [Question], [Standard Answer] is the standard answer to the question, and [Model_answer] is the answer extracted from a model's output to this question.  Determine whether these two answers are consistent.
Please note that only when the [Model_answer] completely matches the [Standard Answer] means they are consistent. For non-multiple-choice questions, if the meaning is expressed in the same way, it is also considered consistent, for example, 0.5m and 50cm.
If they are consistent, Judement is 1; if they are different, Judement is 0.

[Question]: Write the set of numbers represented on the number line in interval notation.
[Standard Answer]: (-2,1]
[Model_answer] : Extracted Answer: \\((-2, 1)\\)
Judgement: 0

[Question]: As shown in the figure, circle O has a radius 1.0, if angle BAC = 60.0, then the length of BC is ()\nChoices:\nA:2\nB:2\u221a{{3}}\nC:\u221a{{3}}\nD:2\u221a{{2}}
[Standard Answer]: C
[Model_answer] : B:2\u221a{{3}}
Judgement: 0

[Question]: Find the domain and range of the function f using interval notation.
[Standard Answer]: domain: [-4, 0) and range: (-3, 1]
[Model_answer] : Range: \\((-4, 1]\\)
Judgement: 0

[Question]: As shown in the figure, circle O has a radius 1.0, if angle BAC = 60.0, then the length of BC is ()\nChoices:\nA:2\nB:2\u221a{{3}}\nC:\u221a{{3}}\nD:2\u221a{{2}}
[Standard Answer]: C
[Model_answer] : null
Judgement: 0

[Question]: Given the graph of the ellipse that intersects with x-axis at 9 and -9 and with y-axis at 3 and -3, determine its equation.A. \\frac{{x^2}}{{81}} + \\frac{{y^2}}{{9}} = 1 B. Can not determine.\n
[Standard Answer]: A
[Model_answer] : \\frac{{x^2}}{{81}} + \\frac{{y^2}}{{9}} = 1
Judgement: 1

[Question]: {question}
[Standard Answer]: {gt}
[Model_answer] : {extraction}
Judgement: """

VERSIONS = ("Text Dominant", "Text Lite", "Vision Intensive", "Vision Dominant", "Vision Only")


def extraction_prompt(response: str) -> str:
    """`extract_answer_s1.create_test_prompt`."""
    return f"{EXTRACTION_EXAMPLES.strip()}\n\nModel response: '{response}'\nExtracted Answer: "


def clean_extraction(text: str) -> str:
    """The official post-processing of GPT's extraction (it sometimes repeats the label)."""
    return text.replace("Extracted Answer: ", "").strip()


def judge_prompt(question: str, gold: str, extraction: str) -> str:
    """`score_answer_s2.create_test_prompt`."""
    return JUDGE_EXAMPLES.strip().format(question=question, gt=gold, extraction=extraction)


def parse_judgement(text: str) -> bool | None:
    """ "1" -> True, "0" -> False, anything else None (the official loop asks again)."""
    verdict = text.replace("Judgement:", "").strip()
    return {"1": True, "0": False}.get(verdict)


_CHOICE_PREFIX_RE = re.compile(r"^\s*Choices?\s*[:：]\s*", re.IGNORECASE)
_AFTER_EQUALS_RE = re.compile(r"^[A-Za-z][A-Za-z ]*\s*\$?\s*=\s*(.+?)\s*\$?\s*$", re.DOTALL)


def gold_forms(gold: str, choices: list[str] | None) -> tuple[str, list[str]]:
    """The gold as the scorer compares it, and other forms a correct answer may take.

    - "Choice: <option text>" (four published problems) -> that option's letter;
    - "Area $=9\\pi\\,\\mathrm{cm}^2$", "Center $=(20,10)$" -> also accept the value after "=".

    >>> gold_forms("Choice: 145°", ["145°", "165°"])
    ('A', ['145°'])
    >>> gold_forms("Area $=9\\\\pi$", None)
    ('Area $=9\\\\pi$', ['9\\\\pi'])
    """
    others: list[str] = []
    stripped = _CHOICE_PREFIX_RE.sub("", gold)
    if stripped != gold:
        squashed = "".join(stripped.split())
        for index, option in enumerate(choices or []):
            if "".join(option.split()) == squashed:
                return chr(ord("A") + index), [stripped]
        gold, others = stripped, []
    if match := _AFTER_EQUALS_RE.match(gold):
        others.append(match.group(1).strip().rstrip("$").strip())
    return gold, others
