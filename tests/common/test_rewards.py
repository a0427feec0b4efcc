"""GRPO reward functions: TRL calling convention, response-only scoring, format, registry."""

from __future__ import annotations

import time

import pytest

from coldstart.common.answers import warm_up
from coldstart.common.rewards import (
    REWARD_FUNCS,
    accuracy_reward,
    bounded_reward_funcs,
    check_metrics_since,
    combine_rewards,
    completion_text,
    format_reward,
    get_reward_func,
)
from coldstart.common.verifier import counts

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _warm_worker() -> None:
    warm_up()


def _chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (r"3 + 4 = 7, so \boxed{7}", "7", 1.0),
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{8}", "7", 0.0),
        ("The answer is 7.", "7", 0.0),  # boxed only: no fallback in the reward
        (r"\boxed{7} hmm, no: \boxed{8}", "7", 0.0),  # only the last box counts
        (r"\boxed{8} hmm, no: \boxed{7}", "7", 1.0),
        (r"\boxed{}", "7", 0.0),
        (r"\boxed{7", "7", 0.0),  # truncated
        (_chat(r"so \boxed{7}"), "7", 1.0),
        ([{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{7}"}]}], "7", 1.0),
        (r"\boxed{7}", 7, 1.0),  # non-string gold from a dataset column
        (r"\boxed{7}", None, 0.0),
    ],
)
def test_accuracy_reward(completion: object, gold: object, expected: float) -> None:
    assert accuracy_reward([completion], [gold]) == [expected]


def test_accuracy_reward_never_reads_the_prompt() -> None:
    """TRL passes ``prompts`` too; a box in the prompt must not earn credit."""
    prompt = [{"role": "user", "content": r"Is it \boxed{7}? Put the answer in \boxed{}."}]
    rewards = accuracy_reward(
        completions=[_chat("It is 7."), "It is 7."],
        answer=["7", "7"],
        prompts=[prompt, r"Is it \boxed{7}?"],
        completion_ids=[[1], [2]],
    )
    assert rewards == [0.0, 0.0]


def test_accuracy_reward_with_a_choices_column() -> None:
    choices = [["10", "12"], ["10", "12"], None]
    completions = [r"\boxed{12}", r"\boxed{(A)}", r"\boxed{B}"]
    assert accuracy_reward(completions, ["B", "B", "B"], choices=choices) == [1.0, 0.0, 1.0]


def test_accuracy_reward_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        accuracy_reward([r"\boxed{1}", r"\boxed{2}"], ["1"])


@pytest.mark.parametrize(
    "completion",
    [
        r"so \boxed{10^{10^{100}}}!",
        r"\boxed{9^{9^{9^9}}}",
        r"\boxed{" + "9" * 5000 + "}",
        "x" * 1_000_000 + r"\boxed{" + "{" * 3000 + "}" * 3000 + "}",
        r"\boxed{\binom{100000000}{50000000}}",
    ],
    ids=lambda c: c[:20],
)
def test_accuracy_reward_adversarial_is_zero_within_the_time_bound(completion: str) -> None:
    start = time.perf_counter()
    assert accuracy_reward([completion], ["5"]) == [0.0]
    assert time.perf_counter() - start < 1.5


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"2 + 2 is four, so the answer is $\boxed{4}$.", 1.0),
        ("Reasoning.\n\\[\n\\boxed{4}\n\\]", 1.0),
        (r"Step 1: add. **\boxed{4}**", 1.0),
        (_chat(r"Add them: \boxed{4}"), 1.0),
        (r"\boxed{4}", 0.0),  # no reasoning
        (r"$\boxed{4}$", 0.0),
        (r"first \boxed{3}, then \boxed{4}", 0.0),  # more than one box
        (r"so \boxed{4} because 2 + 2 = 4", 0.0),  # text after the box
        (r"so \boxed{}", 0.0),
        (r"so \boxed{4", 0.0),
        ("no box at all", 0.0),
    ],
)
def test_format_reward(completion: object, expected: float) -> None:
    assert format_reward([completion], answer=["4"]) == [expected]


def test_completion_text_skips_non_assistant_messages() -> None:
    messages = [{"role": "user", "content": r"\boxed{1}"}, {"role": "assistant", "content": "ok"}]
    assert completion_text(messages) == "ok"


def test_registry() -> None:
    assert set(REWARD_FUNCS) == {"accuracy", "format"}
    assert get_reward_func("format") is format_reward
    with pytest.raises(ValueError, match="valid names: accuracy, format"):
        get_reward_func("nope")


def test_combine_rewards() -> None:
    per_func = {"accuracy": [1.0, 0.0, 1.0], "format": [1.0, 1.0, 0.0]}
    assert combine_rewards(per_func, {"accuracy": 1.0, "format": 0.1}) == pytest.approx(
        [1.1, 0.1, 1.0]
    )
    assert combine_rewards(per_func, {}) == [2.0, 1.0, 1.0]  # unweighted: 1.0 each
    assert combine_rewards({}, {}) == []
    with pytest.raises(ValueError, match="unknown reward functions"):
        combine_rewards(per_func, {"length": 1.0})
    with pytest.raises(ValueError, match="differ in length"):
        combine_rewards({"accuracy": [1.0], "format": [1.0, 0.0]}, {})


def test_bounded_reward_funcs_carry_the_time_bounds() -> None:
    """GRPO's config sets the accuracy reward's bounds; a batch past its deadline scores 0
    and shows up in the step's reward/timeouts."""
    funcs = bounded_reward_funcs(timeout_s=1.0, batch_deadline_s=1e-9)
    assert funcs["accuracy"].__name__ == "accuracy_reward" and funcs["format"] is format_reward
    before = counts()
    assert funcs["accuracy"]([r"\boxed{\sqrt{4}}", r"\boxed{\sqrt{9}}"], ["2", "3"]) == [0.0, 0.0]
    assert check_metrics_since(before)["reward/timeouts"] == 2.0
    in_time = bounded_reward_funcs(timeout_s=5.0, batch_deadline_s=60.0)["accuracy"]
    assert in_time([r"\boxed{\sqrt{4}}", r"\boxed{\sqrt{9}}"], ["2", "4"]) == [1.0, 0.0]
