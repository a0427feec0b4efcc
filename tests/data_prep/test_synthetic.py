"""Every synthetic family: answers correct by construction, re-checked from the pixels or the facts."""

import random
import re

import numpy as np
import pytest
from scipy import ndimage

from coldstart.common.config import SYNTHETIC_FAMILIES
from coldstart.data_prep.synthetic import COLOR_VALUES, COLORS, FAMILIES, generate, structured_cot


def _mask(image, rgb):
    return np.all(np.abs(np.asarray(image).astype(int) - rgb) < 30, axis=-1)


def _shape_of(blob: np.ndarray) -> str:
    """Fill ratio of the bounding box: square ~1, circle ~pi/4, triangle ~1/2."""
    ys, xs = np.nonzero(blob)
    fill = blob.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"


def recount_shapes(scene) -> int:
    color, shape = re.match(r"How many (\w+) (\w+)s are", scene.problem).groups()
    labels, n = ndimage.label(_mask(scene.image, COLORS[color]))
    return sum(_shape_of(labels == i) == shape for i in range(1, n + 1))


def reread_bar(scene) -> int:
    top = int(re.search(r"from 0 to (\d+)", scene.observations[0]).group(1))
    target = "ABCDEF".index(re.search(r"labelled (\w)", scene.problem).group(1))
    blue = _mask(scene.image, COLORS["blue"])
    labels, _n = ndimage.label(blue)
    bars = sorted(ndimage.find_objects(labels), key=lambda s: s[1].start)
    heights = [s[0].stop - s[0].start for s in bars]
    return round(top * heights[target] / max(heights))


def reread_color_sum(scene) -> int:
    """One blob per square, valued by its colour: 1 + difficulty squares, none touching."""
    total, blobs = 0, 0
    for color, value in COLOR_VALUES.items():
        _labels, n = ndimage.label(_mask(scene.image, COLORS[color]))
        total, blobs = total + value * n, blobs + n
    assert blobs == 1 + scene.difficulty
    return total


@pytest.mark.parametrize("family", SYNTHETIC_FAMILIES)
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_answers_recheck(family, difficulty):
    rng = random.Random(f"{family}{difficulty}")
    for _ in range(12):
        scene = FAMILIES[family](rng, difficulty, 112)
        answer = int(scene.answer)
        if family == "count_shapes":
            assert recount_shapes(scene) == answer >= 1
        elif family == "bar_chart":
            assert abs(reread_bar(scene) - answer) <= max(1, answer // 10)
        elif family == "color_sum":
            assert reread_color_sum(scene) == answer
        elif family == "digit_arithmetic":
            nums = [int(x) for x in re.findall(r"\d+", scene.observations[0])]
            assert answer == (np.prod(nums) if "product" in scene.problem else sum(nums))
        else:
            a, b = (int(x) for x in re.findall(r"(\d+) degrees", scene.observations[0]))
            assert a + b + answer == 180 and answer > 0


@pytest.mark.parametrize("family", SYNTHETIC_FAMILIES)
def test_structured_cot_has_the_cold_start_shape(family):
    scene = next(generate(family, 1, [2], 56, seed=0))
    cot = structured_cot(scene)
    parts = [
        cot.index(tag)
        for tag in ("Observation:", "Reasoning:", "Step 1:", "Reflection:", "\\boxed{")
    ]
    assert parts == sorted(parts)
    assert cot.rstrip().endswith(f"\\boxed{{{scene.answer}}}.")


def test_splits_are_disjoint_seeded_and_distinct():
    test = list(generate("digit_arithmetic", 20, [1, 2, 3], 56, seed=1))
    train = list(
        generate("digit_arithmetic", 60, [1, 2, 3], 56, seed=0, exclude={s.uid for s in test})
    )
    assert not {s.uid for s in test} & {s.uid for s in train}
    assert len({s.uid for s in train}) == 60
    again = list(generate("digit_arithmetic", 20, [1, 2, 3], 56, seed=1))
    assert [s.uid for s in again] == [s.uid for s in test]
    assert np.array_equal(np.asarray(again[0].image), np.asarray(test[0].image))


def test_too_many_problems_is_an_error_not_duplicates():
    with pytest.raises(ValueError, match="distinct problems"):
        list(generate("triangle_angle", 500, [1], 56, seed=0))


def _boxed(cot: str) -> str:
    return re.search(r"\\boxed\{([^}]*)\}", cot).group(1)


def test_color_sum_slip_is_a_consistent_wrong_cot_only_where_yellow_is():
    scenes = list(generate("color_sum", 80, [1, 2], 56, seed=3))
    with_yellow = [s for s in scenes if "yellow square" in s.observations[0]]
    assert with_yellow and len(with_yellow) < len(scenes)
    for scene in scenes:
        slipped = structured_cot(scene, slipped=True)
        if scene.slip is None:
            assert scene not in with_yellow
            assert slipped == structured_cot(scene)
            continue
        yellows = scene.observations[0].count("yellow square")
        assert int(_boxed(slipped)) == int(scene.answer) - yellows  # yellow read as 3, not 4
        assert "yellow is worth 3" in slipped and f"= {_boxed(slipped)}." in slipped
        assert _boxed(structured_cot(scene)) == scene.answer


def _slip_data(rate: float, train_per_family: int = 120):
    from coldstart.common.config import DataConfig

    return DataConfig.model_validate(
        {
            "source": "synthetic",
            "seed": 4,
            "synthetic": {
                "families": ["color_sum", "digit_arithmetic"],
                "difficulties": [1, 2],
                "train_per_family": train_per_family,
                "test_per_family": 30,
                "image_size": 56,
                "teacher_slip": rate,
            },
        }
    )


def test_teacher_slip_changes_only_the_sft_reasoning_and_follows_the_problem():
    from coldstart.data_prep.stage import synthetic_splits

    def slipped_ids(splits):
        return {r["id"] for r in splits.sft if _boxed(r["solution"]) != r["answer"]}

    clean, always, some = (synthetic_splits(_slip_data(r)) for r in (0.0, 1.0, 0.5))
    yellow = {r["id"] for r in clean.sft if "yellow square" in r["solution"]}
    assert not slipped_ids(clean)
    assert slipped_ids(always) == yellow  # every problem in the blind spot, no other
    assert 0.25 * len(yellow) < len(slipped_ids(some)) < 0.75 * len(yellow)
    for splits in (always, some):
        assert [r["answer"] for r in splits.sft] == [r["answer"] for r in clean.sft]
        assert splits.eval == clean.eval or [r["solution"] for r in splits.eval] == [
            r["solution"] for r in clean.eval
        ]
        assert [(r["id"], r["answer"], r["solution"]) for r in splits.rl] == [
            (r["id"], r["answer"], "") for r in clean.rl
        ]
    fewer = synthetic_splits(_slip_data(0.5, train_per_family=60))
    assert slipped_ids(fewer) == slipped_ids(some) & {r["id"] for r in fewer.sft}
