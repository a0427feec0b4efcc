"""Scoring on fixture files in the published layouts, with hand-checked expectations.

`strict` mode (the GRPO reward's check) per benchmark, the aggregates (breakdowns, We-Math's
four dimensions, the headline metric) and the scorer registry. `official` mode and the
listed bugs: test_official.py.
"""

from __future__ import annotations

import pytest

from coldstart.common.answers import warm_up
from coldstart.common.config import BenchmarkSpec
from coldstart.common.generation import Completion
from coldstart.common.rewards import accuracy_reward
from coldstart.eval.benchmarks import EvalSample, load_benchmark
from coldstart.eval.scoring import (
    Judgement,
    ScoringContext,
    get_scorer,
    register_scorer,
    score,
)
from coldstart.eval.stage import score_responses
from tests.eval.fixtures import URIS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def _worker() -> None:
    warm_up()


def samples_of(name: str, tmp_path, **spec) -> dict[str, EvalSample]:
    loaded = load_benchmark(BenchmarkSpec(name=name, uri=str(URIS[name]), **spec), None, tmp_path)
    return {s.id: s for s in loaded}


def judge(mode: str, sample: EvalSample, response: str) -> Judgement:
    return score(mode, [sample], [response], ScoringContext())[0]


def score_set(
    name: str, tmp_path, responses: dict[str, str], mode: str = "strict", **spec
) -> dict[str, float]:
    samples = list(samples_of(name, tmp_path, **spec).values())
    completions = [Completion(responses[s.id], [], "stop") for s in samples]
    metrics, _ = score_responses(samples, completions, mode)
    metrics["score"] = metrics[BenchmarkSpec(name=name, uri="x", **spec).headline]
    return metrics


# --------------------------------------------------------------------------- strict mode

STRICT_CASES = [
    # MathVista: gold = the option text ("square" = B)
    ("mathvista", "1", r"The square covers most. \boxed{B}", True),
    ("mathvista", "1", r"\boxed{square}", True),
    ("mathvista", "1", r"\boxed{(A) circle}", False),
    ("mathvista", "1", "Comparing areas, the answer is B.", False),  # no box: no answer
    ("mathvista", "1", r"First \boxed{A}, but on reflection \boxed{B}", True),  # the last box
    ("mathvista", "2", r"\boxed{5}", True),
    ("mathvista", "2", r"\boxed{C}", True),
    ("mathvista", "3", r"\boxed{7}", True),
    ("mathvista", "3", r"\boxed{8}", False),
    ("mathvista", "4", r"\boxed{\frac{5}{2}}", True),
    ("mathvista", "4", r"\boxed{2.46}", False),  # strict: no rounding to the precision
    ("mathvista", "6", r"\boxed{12 cm}", True),
    ("mathvista", "8", r"\boxed{}", False),
    # We-Math: gold letter, options "3cm", "4cm", ...
    ("wemath", "2steps_1-1", r"\boxed{A}", True),
    ("wemath", "2steps_1-1", r"\boxed{3cm}", True),
    ("wemath", "2steps_1-1", r"\boxed{(A) 3cm}", True),
    ("wemath", "2steps_1-1", r"\boxed{B}", False),
    # MathVerse: options parsed from the question
    ("mathverse", "1", r"\boxed{165°}", True),
    ("mathverse", "1", r"\boxed{B}", True),
    ("mathverse", "1", r"\boxed{C}", False),
    ("mathverse", "4", r"\boxed{\frac{3}{4}}", True),
    ("mathverse", "4", r"\boxed{0.7}", False),
    # MathVision
    ("mathvision", "1", r"\boxed{C}", True),
    ("mathvision", "1", r"\boxed{6}", True),  # the gold option's value
    ("mathvision", "4", r"\boxed{(1, 2)}", True),
    ("mathvision", "5", r"\boxed{a dog}", True),
]


@pytest.mark.parametrize(("benchmark", "sample_id", "response", "expected"), STRICT_CASES)
def test_strict_cases(tmp_path, benchmark, sample_id, response, expected):
    sample = samples_of(benchmark, tmp_path)[sample_id]
    assert judge("strict", sample, response).correct is expected


@pytest.mark.parametrize(("benchmark", "sample_id", "response", "expected"), STRICT_CASES)
def test_strict_mode_is_the_grpo_reward(tmp_path, benchmark, sample_id, response, expected):
    """Same verdict as the GRPO accuracy reward on the same gold and options."""
    sample = samples_of(benchmark, tmp_path)[sample_id]
    reward = accuracy_reward([response], [sample.gold], choices=[sample.choices])
    assert (reward == [1.0]) is judge("strict", sample, response).correct


def test_strict_empty_box_is_no_answer(tmp_path):
    sample = samples_of("mathvista", tmp_path)["3"]
    assert judge("strict", sample, r"\boxed{}") == Judgement(None, False)


# --------------------------------------------------------------------------- aggregates


def test_mathvista_breakdowns(tmp_path):
    responses = {
        "1": r"\boxed{square}",  # right
        "2": r"\boxed{C}",  # right
        "3": "There are seven... so the answer is 7.",  # no box: wrong
        "4": r"\boxed{2.4}",  # wrong
        "5": r"\boxed{\frac{2}{3}}",  # wrong: 0.67 is not 2/3
        "6": r"\boxed{12\,\mathrm{cm}}",  # right
        "7": r"\boxed{[5, 2]}",  # wrong
        "8": "",  # wrong, empty
    }
    m = score_set("mathvista", tmp_path, responses)
    assert m["score"] == pytest.approx(3 / 8)
    assert m["question_type/multi_choice"] == 1.0 and m["question_type/free_form"] == 1 / 6
    assert m["no_answer"] == 2 and m["n"] == 8


WEMATH_RESPONSES = {
    # problem 2steps-1 (gold A, B, C): both steps right, composite wrong -> IG
    "2steps_1-1": r"\boxed{A}",
    "2steps_2-1": r"\boxed{4cm}",
    "2steps_multi-1": r"\boxed{D}",
    # problem 2steps-2 (gold A, A, D): one step wrong, composite right -> RM strict / CM loose
    "2steps_1-2": r"\boxed{B}",
    "2steps_2-2": r"\boxed{A}",
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
    assert m["accuracy"] == pytest.approx(5 / 10)
    assert m["one_step"] == pytest.approx(3 / 7) and m["two_step"] == 0.5 and m["three_step"] == 1.0


@pytest.mark.parametrize(
    ("metric", "expected"),
    [(None, 0.5 / 3), ("strict", 0.5 / 3), ("loose", 1.5 / 3), ("accuracy", 0.5)],
)
def test_wemath_headline_is_the_official_strict_score(tmp_path, metric, expected):
    m = score_set("wemath", tmp_path, WEMATH_RESPONSES, metric=metric)
    assert m["score"] == pytest.approx(expected)


def test_wemath_incomplete_problems_are_left_out_of_the_four_dimensions(tmp_path):
    m = score_set("wemath", tmp_path, WEMATH_RESPONSES, limit=4)  # 2steps-1 complete, 2steps-2 not
    assert m["groups"] == 1 and m["ig"] == 1.0 and m["strict"] == pytest.approx(0.5)


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
    assert m["version/text_dominant"] == 1.0 and m["version/vision_only"] == 0.5
    assert m["versions"] == 3  # the fixture has three of the five versions


def test_mathverse_where_selects_a_version(tmp_path):
    loaded = samples_of("mathverse", tmp_path, where={"problem_version": ["Vision Only"]})
    assert sorted(loaded) == ["3", "6"]
    assert loaded["3"].prompt == "Solve the problem shown in the image."


def test_mathvision_breakdowns_and_a_failed_generation(tmp_path):
    samples = list(samples_of("mathvision", tmp_path).values())
    responses = {
        "1": r"\boxed{6}",
        "2": r"\boxed{3.14}",
        "3": r"\boxed{0.5}",
        "4": r"\boxed{(2,1)}",
    }
    completions = [
        Completion(responses[s.id], [], "stop")
        if s.id in responses
        else Completion("", [], "error", error="CUDA error")
        for s in samples
    ]
    m, judged = score_responses(samples, completions, "official")
    assert m["accuracy"] == pytest.approx(3 / 5) and m["errors"] == 1
    assert m["level/1"] == 0.5  # ids 1 (right) and 5 (failed)
    assert any(k.startswith("subject/") for k in m) and any(
        k.startswith("level_subject/") for k in m
    )
    assert judged[-1].correct is False


def test_mathvision_reads_relative_image_paths(tmp_path):
    from coldstart.eval.benchmarks import load_images

    sample = samples_of("mathvision", tmp_path)["1"]
    (image,) = load_images(sample)
    assert image.size == (56, 56) and sample.prompt.startswith("<image1>How many")


def test_where_matches_numbers_as_text(tmp_path):
    assert sorted(samples_of("mathvision", tmp_path, where={"level": [1]})) == ["1", "5"]


# --------------------------------------------------------------------------- registry


def test_a_custom_scorer_replaces_the_built_in_one(tmp_path):
    sample = samples_of("mathvista", tmp_path)["3"]
    built_in = get_scorer("strict", "mathvista")

    def always_right(samples, responses, ctx):
        return [Judgement("anything", True) for _ in samples]

    register_scorer("strict", "mathvista", always_right)
    try:
        assert judge("strict", sample, "no answer at all") == Judgement("anything", True)
    finally:
        register_scorer("strict", "mathvista", built_in)
    assert judge("strict", sample, "no answer at all").correct is False


def test_unknown_scorer_names_the_known_ones():
    with pytest.raises(KeyError, match=r"known:.*official"):
        get_scorer("lenient", "mathvista")
