"""Scoring per benchmark on fixture files in the published layouts, with hand-checked expectations.

Each benchmark has (a) single cases: one response, whether it is right, by that benchmark's
rules, and (b) a full set, one response per fixture row, whose aggregate score was worked
out by hand (the arithmetic is in the comments).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from components.common.answers import warm_up
from components.common.config import BenchmarkSpec
from components.common.generation import Completion
from components.eval.benchmarks import load_benchmark
from components.eval.scoring import judge, parse_number
from components.eval.stage import headline, score_responses

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
URIS = {
    "mathvista": FIXTURES / "mathvista",
    "wemath": FIXTURES / "wemath" / "testmini.parquet",
    "mathverse": FIXTURES / "mathverse" / "testmini.parquet",
    "mathvision": FIXTURES / "mathvision" / "test.parquet",
}


@pytest.fixture(scope="module", autouse=True)
def _worker() -> None:
    warm_up()


def samples_of(name: str, tmp_path: Path, **spec) -> dict:
    loaded = load_benchmark(BenchmarkSpec(name=name, uri=str(URIS[name]), **spec), None, tmp_path)
    return {s.id: s for s in loaded}


def score_set(name: str, tmp_path: Path, responses: dict[str, str], **spec) -> dict[str, float]:
    samples = list(samples_of(name, tmp_path, **spec).values())
    completions = [Completion(responses[s.id], [], "stop") for s in samples]
    metrics, rows = score_responses("m", samples, completions, 1.0)
    assert [r["id"] for r in rows] == [s.id for s in samples]
    metrics["score"] = headline(BenchmarkSpec(name=name, uri="x", **spec), metrics)
    return metrics


# --------------------------------------------------------------------------- MathVista

MATHVISTA_CASES = [
    # multiple choice: the gold answer is the option text ("square" = B)
    ("1", r"The square covers most. \boxed{B}", True),
    ("1", r"\boxed{square}", True),  # option text instead of the letter
    ("1", r"\boxed{(A) circle}", False),
    ("1", "Comparing areas, the answer is B.", True),  # no box: "answer is" fallback
    ("1", r"First \boxed{A}, but on reflection \boxed{B}", True),  # several boxes: the last
    ("1", r"\boxed{B}, no: \boxed{C}", False),
    ("2", r"\boxed{5}", True),  # numeric option text: "5" is option C
    ("2", r"\boxed{C}", True),
    ("2", r"\boxed{D}", False),
    # free-form integer
    ("3", r"\boxed{7}", True),
    ("3", r"\boxed{7.0}", True),
    ("3", "So the answer is 7.", True),
    ("3", r"\boxed{8}", False),
    # float with precision 1 / 2: both sides rounded to the row's precision
    ("4", r"\boxed{2.5}", True),
    ("4", r"\boxed{\frac{5}{2}}", True),  # fraction vs decimal
    ("4", r"\boxed{2.46}", True),  # rounds to 2.5
    ("4", r"\boxed{2.4}", False),
    ("5", r"\boxed{\frac{2}{3}}", True),  # 0.666.. -> 0.67
    ("5", r"\boxed{2/3}", True),
    ("5", r"\boxed{0.667}", True),
    ("5", r"\boxed{0.6}", False),
    # units: the row's unit "cm"
    ("6", r"\boxed{12 cm}", True),
    ("6", r"\boxed{12\text{ cm}}", True),
    ("6", r"$AB = \boxed{12}$", True),
    ("6", r"\boxed{120 mm}", False),  # units are stripped, not converted
    # list
    ("7", r"\boxed{[2, 5]}", True),
    ("7", r"\boxed{2, 5}", True),
    ("7", r"\boxed{[5, 2]}", False),
    # nothing to score
    ("8", "", False),
    ("8", r"\boxed{}", False),
]


@pytest.mark.parametrize(("sample_id", "response", "expected"), MATHVISTA_CASES)
def test_mathvista_cases(tmp_path, sample_id, response, expected):
    sample = samples_of("mathvista", tmp_path)[sample_id]
    assert judge(sample, response).correct is expected


def test_mathvista_score(tmp_path):
    responses = {
        "1": r"\boxed{square}",  # right (option text)
        "2": r"\boxed{C}",  # right
        "3": "There are seven... so the answer is 7.",  # right, no box
        "4": r"\boxed{2.4}",  # wrong
        "5": r"\boxed{\frac{2}{3}}",  # right
        "6": r"\boxed{12\,\mathrm{cm}}",  # right
        "7": r"\boxed{[5, 2]}",  # wrong
        "8": "",  # wrong, empty
    }
    m = score_set("mathvista", tmp_path, responses)
    assert m["score"] == pytest.approx(5 / 8)  # 62.5
    assert m["question_type/multi_choice"] == pytest.approx(2 / 2)
    assert m["question_type/free_form"] == pytest.approx(3 / 6)
    assert m["no_answer"] == 1 and m["n"] == 8


def test_mathvista_prompt_shows_lettered_choices(tmp_path):
    sample = samples_of("mathvista", tmp_path)["1"]
    assert sample.prompt.endswith("Choices:\n(A) circle\n(B) square\n(C) triangle")
    assert sample.gold == "B" and sample.choices == ["circle", "square", "triangle"]
    assert "1 decimal place" in samples_of("mathvista", tmp_path)["4"].prompt


# --------------------------------------------------------------------------- We-Math

WEMATH_CASES = [
    ("2steps_1-1", r"\boxed{A}", True),
    ("2steps_1-1", r"\boxed{3cm}", True),  # option text
    ("2steps_1-1", r"\boxed{(A) 3cm}", True),
    ("2steps_1-1", r"\boxed{3}", True),  # math-equal to the option text "3cm"
    ("2steps_1-1", r"\boxed{B}", False),
    ("2steps_multi-1", r"\boxed{C}. Wait, \boxed{5cm}", True),
    ("2steps_multi-1", "", False),
]


@pytest.mark.parametrize(("sample_id", "response", "expected"), WEMATH_CASES)
def test_wemath_cases(tmp_path, sample_id, response, expected):
    sample = samples_of("wemath", tmp_path)[sample_id]
    assert sample.choices == ["3cm", "4cm", "5cm", "6cm", "No correct answer"]
    assert judge(sample, response).correct is expected


WEMATH_RESPONSES = {
    # problem 2steps-1 (gold A, B, C): both steps right, composite wrong -> IG
    "2steps_1-1": r"\boxed{A}",
    "2steps_2-1": r"\boxed{4cm}",
    "2steps_multi-1": r"\boxed{D}",
    # problem 2steps-2 (gold A, A, D): one step wrong, composite right -> RM strict / CM loose
    "2steps_1-2": r"\boxed{B}",
    "2steps_2-2": "The answer is A.",
    "2steps_multi-2": r"\boxed{(D) 6cm}",
    # problem 3steps-1 (gold B, C, A, B): all steps wrong, composite right -> RM strict and loose
    "3steps_1-1": "",
    "3steps_2-1": "no box and no answer",
    "3steps_3-1": r"\boxed{B}",
    "3steps_multi-1": r"\boxed{A} no wait \boxed{B}",
}


def test_wemath_four_dimensional_metrics(tmp_path):
    m = score_set("wemath", tmp_path, WEMATH_RESPONSES)
    # N = 3 problems; IK 0, IG 1, RM strict 2 (CM strict 0), RM loose 1 (CM loose 1)
    assert m["groups"] == 3
    assert (m["ik"], m["ig"]) == pytest.approx((0.0, 1 / 3))
    assert m["strict"] == pytest.approx((3 - 0.5 * 1 - 2 - 0) / 3)  # 16.7
    assert m["loose"] == pytest.approx((3 - 0.5 * 1 - 1 - 0) / 3)  # 50.0
    assert (m["cm_strict"], m["rm_strict"]) == pytest.approx((0.0, 2 / 2))  # RM as RM / (CM + RM)
    assert (m["cm_loose"], m["rm_loose"]) == pytest.approx((1 / 3, 1 / 2))
    assert m["accuracy"] == pytest.approx(5 / 10)  # right: 2 + 2 + 1 of 3 + 3 + 4 questions
    assert m["one_step"] == pytest.approx(3 / 7) and m["two_step"] == 0.5 and m["three_step"] == 1.0
    assert m["score"] == m["accuracy"]


@pytest.mark.parametrize(
    ("metric", "expected"), [("strict", 0.5 / 3), ("loose", 1.5 / 3), ("accuracy", 0.5)]
)
def test_wemath_report_column_follows_metric(tmp_path, metric, expected):
    assert score_set("wemath", tmp_path, WEMATH_RESPONSES, metric=metric)["score"] == pytest.approx(
        expected
    )


def test_wemath_incomplete_problems_are_left_out_of_the_four_dimensions(tmp_path):
    m = score_set("wemath", tmp_path, WEMATH_RESPONSES, limit=4)  # 2steps-1 complete, 2steps-2 not
    assert m["groups"] == 1 and m["ig"] == 1.0 and m["strict"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- MathVerse

MATHVERSE_CASES = [
    ("1", r"\boxed{165°}", True),  # option text, options parsed from the question
    ("1", r"\boxed{165^\circ}", True),
    ("1", r"\boxed{B}", True),
    ("1", r"\boxed{C}", False),
    ("3", r"\boxed{B}", True),  # Vision Only: no options in the text, the letter still counts
    ("4", r"\boxed{\frac{3}{4}}", True),  # fraction vs decimal gold 0.75
    ("4", r"\boxed{75\%}", True),
    ("4", r"\boxed{0.7}", False),
]


@pytest.mark.parametrize(("sample_id", "response", "expected"), MATHVERSE_CASES)
def test_mathverse_cases(tmp_path, sample_id, response, expected):
    sample = samples_of("mathverse", tmp_path)[sample_id]
    assert judge(sample, response).correct is expected


def test_mathverse_score_by_version(tmp_path):
    responses = {
        "1": r"\boxed{165°}",
        "2": r"\boxed{B}",
        "3": r"\boxed{B}",
        "4": r"\boxed{\frac{3}{4}}",
        "5": r"\boxed{3/4}",
        "6": r"\boxed{0.7}",
    }
    m = score_set("mathverse", tmp_path, responses)
    assert m["score"] == pytest.approx(5 / 6)
    assert m["version/text_dominant"] == 1.0 and m["version/vision_intensive"] == 1.0
    assert m["version/vision_only"] == 0.5


def test_mathverse_where_selects_a_version(tmp_path):
    loaded = samples_of("mathverse", tmp_path, where={"problem_version": ["Vision Only"]})
    assert sorted(loaded) == ["3", "6"]
    assert loaded["3"].prompt == "Solve the problem shown in the image."


# --------------------------------------------------------------------------- MathVision

MATHVISION_CASES = [
    ("1", r"\boxed{C}", True),
    ("1", r"\boxed{6}", True),  # the gold option's value
    ("1", r"\boxed{E}", False),
    ("2", r"\boxed{3.1416}", True),  # equal at 2 decimals, as the official is_equal
    ("2", r"\boxed{3.15}", False),
    ("3", r"\boxed{0.5}", True),
    ("4", r"\boxed{(1, 2)}", True),
    ("4", r"\boxed{(2,1)}", False),
    ("5", r"\boxed{a dog}", True),  # option text, any case
]


@pytest.mark.parametrize(("sample_id", "response", "expected"), MATHVISION_CASES)
def test_mathvision_cases(tmp_path, sample_id, response, expected):
    sample = samples_of("mathvision", tmp_path)[sample_id]
    assert judge(sample, response).correct is expected


def test_mathvision_score_with_a_failed_generation(tmp_path):
    samples = list(samples_of("mathvision", tmp_path).values())
    responses = {
        "1": r"\boxed{6}",
        "2": r"\boxed{3.1416}",
        "3": r"\boxed{0.5}",
        "4": r"\boxed{(2,1)}",
    }
    completions = [
        Completion(responses[s.id], [], "stop")
        if s.id in responses
        else Completion("", [], "error", error="CUDA error")
        for s in samples
    ]
    m, rows = score_responses("m", samples, completions, 1.0)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["errors"] == 1  # 60.0
    assert m["level/1"] == 0.5  # ids 1 (right) and 5 (failed)
    assert rows[-1]["error"] == "CUDA error" and rows[-1]["correct"] is False


def test_mathvision_reads_relative_image_paths(tmp_path):
    from components.eval.benchmarks import load_images

    sample = samples_of("mathvision", tmp_path)["1"]
    (image,) = load_images(sample)
    assert image.size == (56, 56) and sample.prompt.startswith("<image1>How many")


# --------------------------------------------------------------------------- shared rules


def test_synthetic_degrees():
    from components.eval.benchmarks import EvalSample

    sample = EvalSample("t", "synthetic", "angle x?", [], "30")
    assert (
        judge(sample, r"\boxed{30^\circ}").correct and judge(sample, r"\boxed{30 degrees}").correct
    )
    assert not judge(sample, r"\boxed{60}").correct


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,234", 1234.0),
        (r"\dfrac{3}{4}", 0.75),
        ("-2.5 m", -2.5),
        (r"x \approx 3.2", 3.2),
        ("45°", 45.0),
        ("12 cm^2", 12.0),
        (r"\sqrt{2}", None),
        ("1, 2", None),
        ("1/0", None),
    ],
)
def test_parse_number(text, value):
    got = parse_number(text)
    assert (got is None and value is None) or math.isclose(got, value)


def test_where_matches_numbers_as_text(tmp_path):
    assert sorted(samples_of("mathvision", tmp_path, where={"level": [1]})) == ["1", "5"]


def test_mathvista_float_without_precision_uses_the_gold_decimals():
    from components.eval.benchmarks import EvalSample

    info = {"question_type": "free_form", "answer_type": "float", "precision": None, "unit": ""}
    sample = EvalSample("f", "mathvista", "q", [], "1.25", None, info)
    assert judge(sample, r"\boxed{1.25}").correct and judge(sample, r"\boxed{1.249}").correct
    assert not judge(sample, r"\boxed{1.2}").correct
