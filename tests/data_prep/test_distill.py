"""Cold-start distillation: the rejection filter on given completions, and a real run with the tiny teacher."""

from __future__ import annotations

import datasets
import pytest

from coldstart.common.answers import warm_up
from coldstart.common.config import DistillConfig
from coldstart.common.generation import Completion
from coldstart.data_prep.distill import distill_records, gold_answer, select_verified
from coldstart.data_prep.records import DataError
from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep
from tests.conftest import tiny_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def _worker() -> None:
    warm_up()


def c(text: str, finish: str = "stop") -> Completion:
    return Completion(text, [], finish)


GROUP = [
    c(r"I see 3 circles. Step 1: count. Reflection: ok. \boxed{3}"),  # verified
    c(r"I see 4 circles. \boxed{4}"),  # wrong answer
    c("Three circles, so the answer is 3."),  # right, but not boxed: the format is required
    c(r"First \boxed{4}, on reflection \boxed{3.0}"),  # last box, equivalent: verified
    c(r"Counting... \boxed{3}", "length"),  # cut at the token limit: not a finished response
    c("", "error"),  # a failed generation
    c(r"I see 3 circles. Step 1: count. Reflection: ok. \boxed{3}"),  # a repeat of the first
]


def test_select_verified_keeps_finished_boxed_equivalent_answers():
    kept, accepted = select_verified(GROUP, "3", keep=5)
    assert accepted == 3  # samples 0, 3 and 6
    assert kept == [GROUP[0].text, GROUP[3].text]  # distinct texts only, in sampling order
    assert select_verified(GROUP, "3", keep=1) == ([GROUP[0].text], 3)
    assert select_verified(GROUP, "5", keep=1) == ([], 0)


def test_select_verified_uses_math_equivalence():
    kept, accepted = select_verified(
        [c(r"half: \boxed{\frac{1}{2}}"), c(r"\boxed{0.5}"), c(r"\boxed{2}")], "1/2", keep=3
    )
    assert accepted == 2 and len(kept) == 2


def test_gold_answer_reads_a_boxed_response():
    assert gold_answer("7") == "7" and gold_answer(r"The count is \boxed{7}.") == "7"


def _records(n: int) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "images": [],
            "problem": f"q{i}",
            "answer": "3",
            "solution": f"original {i}",
            "category": "",
        }
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("unverified", "rows", "kept_original"), [("drop", 3, 0), ("keep_original", 4, 1)]
)
def test_distill_records_counts(unverified, rows, kept_original):
    groups = [GROUP[:2], [GROUP[1], GROUP[2]], GROUP[3:7], [GROUP[0], GROUP[3]]]
    cfg = DistillConfig(
        enabled=True, teacher="t", samples_per_problem=4, keep_per_problem=2, unverified=unverified
    )
    out, counts = distill_records(_records(4), groups, cfg)
    # problem 0: 1 verified; 1: none; 2: samples 3 and 6 verified; 3: both verified -> 2 rows
    assert (counts.samples, counts.accepted, counts.solved) == (10, 5, 3)
    assert (counts.errors, counts.truncated) == (1, 1)
    assert counts.rows == len(out) == rows + 2 and counts.kept_original == kept_original
    assert [r["id"] for r in out if r["id"].startswith("p3")] == ["p3-d0", "p3-d1"]
    assert out[0]["solution"] == GROUP[0].text
    metrics = counts.metrics()
    assert metrics["data/distill/acceptance_rate"] == pytest.approx(5 / 10)
    assert metrics["data/distill/solved_rate"] == pytest.approx(3 / 4)


def test_data_prep_with_the_tiny_teacher(tmp_path, tiny_model_dir):
    distill = {
        "enabled": True,
        "teacher": str(tiny_model_dir),
        "samples_per_problem": 2,
        "max_new_tokens": 12,
        "temperature": 1.0,
        "batch_size": 16,
        "unverified": "keep_original",
    }
    cfg = tiny_config(tmp_path)
    cfg = tiny_config(tmp_path, data={**cfg.data.model_dump(), "distill": distill})
    out = DataPrepOutputs.under(tmp_path)
    metrics = run_data_prep(cfg, out, tmp_path / "cache")

    problems = metrics["data/distill/problems"]
    assert problems == 48  # 4 families x 12 training problems
    assert metrics["data/distill/samples"] == 2 * problems
    assert 0.0 <= metrics["data/distill/acceptance_rate"] <= 1.0  # a random teacher: near 0
    assert metrics["data/distill/accepted"] == round(
        metrics["data/distill/acceptance_rate"] * 2 * problems
    )
    assert (
        metrics["data/distill/rows"]
        == metrics["data/distill/problems_solved"] + metrics["data/distill/kept_original"]
    )
    sft = datasets.load_from_disk(str(out.sft))
    assert len(sft["train"]) + len(sft["validation"]) == metrics["data/distill/rows"]
    assert metrics["data/sft_rows"] == len(sft["train"])


def test_data_prep_fails_clearly_when_nothing_verifies(tmp_path, tiny_model_dir):
    distill = {
        "enabled": True,
        "teacher": str(tiny_model_dir),
        "samples_per_problem": 1,
        "max_new_tokens": 4,
    }
    cfg = tiny_config(tmp_path)
    data = {
        **cfg.data.model_dump(),
        "distill": distill,
        "synthetic": {
            **cfg.data.synthetic.model_dump(),
            "train_per_family": 2,
            "families": ["count_shapes"],
        },
    }
    cfg = tiny_config(tmp_path, data=data)
    with pytest.raises(DataError, match="distillation kept no SFT rows: 0 of 2 samples"):
        run_data_prep(
            cfg,
            DataPrepOutputs.under(tmp_path),
            tmp_path / "cache",
        )
