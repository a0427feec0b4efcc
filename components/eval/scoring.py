"""Score responses as each benchmark does, with the answer checking GRPO is rewarded with.

Extraction is `components.common.answers.extract_answer` (last `\\boxed{}`, then "the answer
is X", then the last line; option letters recognised) and equivalence is `is_equivalent`
(time-bounded math-verify), so training and evaluation judge an answer the same way. On top
of that, each benchmark's own rules, rule-based where the official scripts use a GPT judge:

- MathVista: multiple choice by letter or option text (the gold answer is the option text);
  free-form `integer` answers compare `int(float(pred))` with the gold (the official
  `calculate_score.py` rule), `float` answers after rounding both to the row's `precision`,
  units (the row's `unit`, `\\text{cm}`, `^\\circ`, `%`) stripped; `list` element by element.
- We-Math: the option letter (or the option's text); per question accuracy, plus the official
  four-dimensional metrics over each problem's one-step sub-problems and its multi-step
  composite: IK, IG, CM and RM, and the strict / loose scores
  `(N - 0.5 IG - RM - IK) / N` (N = complete problems in the file).
- MathVerse: letter or option text for multi-choice (options parsed from the question),
  math equivalence for free-form; accuracy per problem version.
- MathVision: the gold letter or the gold option's value, numbers equal at 2 decimals
  (the official `is_equal` rounding), else math equivalence.
- synthetic: math equivalence with the generator's answer.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from components.common.answers import choice_letter, extract_answer, is_equivalent
from components.eval.benchmarks import EvalSample


@dataclass(frozen=True)
class Judgement:
    extracted: str | None
    correct: bool


# --------------------------------------------------------------------------- numbers

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(_NUM)
_FRAC_RE = re.compile(rf"([-+]?)\\[dt]?frac\{{({_NUM})\}}\{{({_NUM})\}}")
_SLASH_RE = re.compile(rf"({_NUM})\s*/\s*({_NUM})")
_UNIT_TAIL_RE = re.compile(rf"({_NUM})\s*(?:[a-zA-Z]+\.?(?:\^\{{?[23]\}}?|[23]?)\s*){{1,3}}")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_TEXT_CMD_RE = re.compile(r"\\(?:text|mathrm|mbox|textbf|mathbf|operatorname)\s*\{([^{}]*)\}")
_DROP = (
    "$",
    "\\left",
    "\\right",
    "\\!",
    "\\,",
    "\\;",
    "\\ ",
    "^{\\circ}",
    "^\\circ",
    "°",
    "\\%",
    "%",
    "{,}",
)


def clean_number_text(text: str, unit: str = "") -> str:
    """Strip what surrounds a number: math delimiters, `\\text{}` units, degrees, percent, the row's unit.

    >>> clean_number_text(r"$x = 12\\,\\text{cm}$", unit="cm")
    '12'
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
    return text


def parse_number(text: str, unit: str = "") -> float | None:
    """A plain number, a fraction (`\\frac{a}{b}`, `a/b`) or a number with a unit word after it; else None.

    >>> parse_number("1,234.5"), parse_number(r"\\frac{1}{4}"), parse_number("-3/4"), parse_number("5 cm")
    (1234.5, 0.25, -0.75, 5.0)
    >>> parse_number(r"2\\sqrt{2}") is None, parse_number("1, 2") is None
    (True, True)
    """
    text = clean_number_text(text, unit)
    if _NUM_RE.fullmatch(text):
        return float(text)
    if m := _FRAC_RE.fullmatch(text):
        sign = -1.0 if m.group(1) == "-" else 1.0
        return sign * float(m.group(2)) / float(m.group(3)) if float(m.group(3)) else None
    if m := _SLASH_RE.fullmatch(text):
        return float(m.group(1)) / float(m.group(2)) if float(m.group(2)) else None
    if m := _UNIT_TAIL_RE.fullmatch(text):
        return float(m.group(1))
    return None


def round_half_up(value: float, places: int) -> Decimal:
    """Decimal rounding (1.45 -> 1.5), not binary float rounding (round(1.45, 1) == 1.4)."""
    return Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _squash(text: str) -> str:
    return "".join(text.split()).casefold()


# --------------------------------------------------------------------------- judges


def _extract(sample: EvalSample, response: str) -> str | None:
    """The response's answer; with options, an option's letter unless the answer is an option's text.

    `extract_answer(..., choices=)` reads "A dog" (the text of option B) as letter A; an exact
    option text is checked first here.
    """
    answer = extract_answer(response)
    if answer is None or not sample.choices:
        return answer
    if _squash(answer) in {_squash(c) for c in sample.choices}:
        return answer
    return choice_letter(answer, len(sample.choices)) or answer


def judge_synthetic(sample: EvalSample, response: str, timeout_s: float) -> Judgement:
    pred = _extract(sample, response)
    return Judgement(pred, is_equivalent(pred, sample.gold, timeout_s=timeout_s))


def _list_items(text: str, unit: str) -> list[str]:
    return [
        item
        for item in (clean_number_text(i, unit) for i in text.strip().strip("[]()").split(","))
        if item
    ]


def _lists_equal(pred: str, gold: str, unit: str) -> bool:
    a, b = _list_items(pred, unit), _list_items(gold, unit)
    if len(a) != len(b) or not a:
        return False
    for x, y in zip(a, b, strict=False):
        nx, ny = parse_number(x), parse_number(y)
        if (nx is None or ny is None or nx != ny) and _squash(x) != _squash(y):
            return False
    return True


def judge_mathvista(sample: EvalSample, response: str, timeout_s: float) -> Judgement:
    pred = _extract(sample, response)
    if pred is None:
        return Judgement(None, False)
    info = sample.info
    if info["question_type"] == "multi_choice":
        return Judgement(
            pred, is_equivalent(pred, sample.gold, choices=sample.choices, timeout_s=timeout_s)
        )
    answer_type, unit = info["answer_type"], info.get("unit", "")
    if answer_type in ("integer", "float"):
        value, gold = parse_number(pred, unit), parse_number(sample.gold)
        if value is not None and gold is not None:
            if answer_type == "integer":
                return Judgement(pred, int(value) == int(gold))
            places = info.get("precision")
            if places is None:  # not given: the gold answer's own decimals
                places = len(sample.gold.partition(".")[2])
            return Judgement(pred, round_half_up(value, places) == round_half_up(gold, places))
    elif answer_type == "list":
        return Judgement(pred, _lists_equal(pred, sample.gold, unit))
    elif _squash(clean_number_text(pred, unit)) == _squash(sample.gold):
        return Judgement(pred, True)
    return Judgement(pred, is_equivalent(pred, sample.gold, timeout_s=timeout_s))


def judge_choice_or_math(sample: EvalSample, response: str, timeout_s: float) -> Judgement:
    """We-Math and MathVerse: the option (letter or text) for multiple choice, math equivalence otherwise."""
    pred = _extract(sample, response)
    if pred is None:
        return Judgement(None, False)
    if is_equivalent(pred, sample.gold, choices=sample.choices, timeout_s=timeout_s):
        return Judgement(pred, True)
    value, gold = parse_number(pred), parse_number(sample.gold)
    return Judgement(pred, value is not None and value == gold)


def judge_mathvision(sample: EvalSample, response: str, timeout_s: float) -> Judgement:
    pred = _extract(sample, response)
    if pred is None:
        return Judgement(None, False)
    if sample.choices:
        return Judgement(
            pred, is_equivalent(pred, sample.gold, choices=sample.choices, timeout_s=timeout_s)
        )
    value, gold = parse_number(pred), parse_number(sample.gold)
    if value is not None and gold is not None:
        return Judgement(pred, round_half_up(value, 2) == round_half_up(gold, 2))
    if _squash(pred) == _squash(sample.gold):
        return Judgement(pred, True)
    return Judgement(pred, is_equivalent(pred, sample.gold, timeout_s=timeout_s))


JUDGES: dict[str, Callable[[EvalSample, str, float], Judgement]] = {
    "synthetic": judge_synthetic,
    "mathvista": judge_mathvista,
    "wemath": judge_choice_or_math,
    "mathverse": judge_choice_or_math,
    "mathvision": judge_mathvision,
}


def judge(sample: EvalSample, response: str, timeout_s: float = 1.0) -> Judgement:
    """Whether `response` answers `sample` correctly, by the sample's benchmark's rules."""
    try:
        return JUDGES[sample.benchmark](sample, response or "", timeout_s)
    except (ValueError, InvalidOperation, OverflowError):  # a number too odd to round: wrong
        return Judgement(None, False)


# --------------------------------------------------------------------------- aggregation

BREAKDOWNS = {
    "synthetic": ("family",),
    "mathvista": ("question_type", "answer_type"),
    "wemath": ("steps",),
    "mathverse": ("version", "question_type"),
    "mathvision": ("level",),
}


def slug(value: str) -> str:
    """A metric-name-safe form: `Vision Only` -> `vision_only`, `SFT+RL` -> `sft_rl`."""
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_") or "none"


def _mean(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def aggregate(
    benchmark: str,
    samples: Sequence[EvalSample],
    correct: Sequence[bool],
    extracted: Sequence[str | None],
    errors: Sequence[bool],
) -> dict[str, float]:
    """Accuracy, counts, per-group accuracies (`version/vision_only`) and benchmark-specific scores."""
    metrics = {
        "accuracy": _mean(correct),
        "n": float(len(samples)),
        "correct": float(sum(correct)),
        "no_answer": float(sum(e is None for e in extracted)),
        "errors": float(sum(errors)),
    }
    for key in BREAKDOWNS.get(benchmark, ()):
        groups: dict[str, list[bool]] = defaultdict(list)
        for sample, ok in zip(samples, correct, strict=False):
            groups[slug(sample.info.get(key, ""))].append(ok)
        for value, oks in sorted(groups.items()):
            metrics[f"{key}/{value}"] = _mean(oks)
    if benchmark == "wemath":
        metrics.update(wemath_scores(samples, correct))
    return metrics


def wemath_scores(samples: Sequence[EvalSample], correct: Sequence[bool]) -> dict[str, float]:
    """We-Math's four-dimensional metrics over the problems whose sub-problems and composite are all present.

    For a problem with one-step sub-problems s_i and the multi-step composite m:
    IK = some s_i wrong and m wrong; IG = all s_i right, m wrong;
    CM strict = all s_i right and m right, loose = some s_i right and m right;
    RM strict = some s_i wrong and m right, loose = all s_i wrong and m right.
    Score = (N - 0.5 IG - RM - IK) / N; RM is reported as RM / (CM + RM), the others per N.
    """
    parts: dict[str, dict[str, bool]] = defaultdict(dict)
    for sample, ok in zip(samples, correct, strict=False):
        parts[sample.info["group"]][sample.info["part"]] = bool(ok)
    counts = defaultdict(int)
    one_step: list[bool] = []
    multi = {"2steps": [], "3steps": []}
    for group, answers in parts.items():
        n_steps = 3 if group.startswith("3steps") else 2
        needed = [str(i) for i in range(1, n_steps + 1)]
        if "multi" not in answers or any(p not in answers for p in needed):
            continue
        subs, composite = [answers[p] for p in needed], answers["multi"]
        counts["groups"] += 1
        one_step.extend(subs)
        multi[f"{n_steps}steps"].append(composite)
        counts["ik"] += (not all(subs)) and not composite
        counts["ig"] += all(subs) and not composite
        counts["cm_strict"] += all(subs) and composite
        counts["rm_strict"] += (not all(subs)) and composite
        counts["cm_loose"] += any(subs) and composite
        counts["rm_loose"] += (not any(subs)) and composite
    n = counts["groups"]
    if not n:
        return {"groups": 0.0}
    out = {"groups": float(n), "ik": counts["ik"] / n, "ig": counts["ig"] / n}
    for mode in ("strict", "loose"):
        cm, rm = counts[f"cm_{mode}"], counts[f"rm_{mode}"]
        out[mode] = (n - 0.5 * counts["ig"] - rm - counts["ik"]) / n
        out[f"cm_{mode}"] = cm / n
        out[f"rm_{mode}"] = rm / (cm + rm) if cm + rm else 0.0
    out["one_step"] = _mean(one_step)
    for key, name in (("2steps", "two_step"), ("3steps", "three_step")):
        if multi[key]:
            out[name] = _mean(multi[key])
    return out
