"""GRPO reward functions in TRL's convention: pure ``(completions, **columns) -> list[float]``.

``completions`` are the generated responses only, never the prompt: a reward that reads
the prompt can be gamed (a box in the question would earn credit). Each is a string, or
TRL's conversational form ``[{"role": "assistant", "content": "..."}]``. Extra dataset
columns (``answer``, optionally ``choices``) arrive as keyword lists, one entry per
completion. Answer checking is ``coldstart.common.answers``, the same code eval scores with.

The accuracy reward checks a batch in parallel on the verifier's worker pool
(``coldstart.common.verifier``): each completion within ``timeout_s``, the whole batch
within ``batch_deadline_s``; a completion over either scores 0 and is counted in
``verifier.counts()``, which the trainer logs (``reward/timeouts``, ``reward/too_big``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from coldstart.common.answers import MAX_SCAN_CHARS, extract_boxed, find_boxed, is_equivalent
from coldstart.common.verifier import counts, map_within_deadline

DEFAULT_TIMEOUT_S = 1.0
"""Time bound of one completion's answer check."""

Completion = str | list[dict[str, Any]]
RewardFunc = Callable[..., list[float]]


def completion_text(completion: Completion) -> str:
    """The response text of one completion, plain or conversational.

    Conversational: the assistant messages' text, joined (content may be a string or a
    list of ``{"type": "text", "text": ...}`` parts).

    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    texts = []
    for message in completion:
        if message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content") or ""
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(part.get("text", "") for part in content if part.get("type") == "text")
    return "\n".join(texts)


def accuracy_reward(
    completions: Sequence[Completion],
    answer: Sequence[Any],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_deadline_s: float | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 where the last ``\\boxed{}`` of the response is equivalent to ``answer``, else 0.0.

    Boxed only (no "the answer is" fallback): the reward credits the format the prompt
    asks for. A ``choices`` column, if the dataset has one, enables option-text matching.
    Completions are checked in parallel, each within ``timeout_s``; those not checked
    within ``batch_deadline_s`` (None = no deadline) score 0.0.

    >>> accuracy_reward([r"1/2 of 1 is \\boxed{0.5}", r"\\boxed{3}", "0.5"], ["1/2", "1/2", "1/2"])
    [1.0, 0.0, 0.0]
    >>> accuracy_reward([[{"role": "assistant", "content": r"so \\boxed{(B)}"}]], ["B"])
    [1.0]
    """
    choices = kwargs.get("choices") or [None] * len(completions)
    jobs = [
        (completion_text(completion), "" if gold is None else str(gold), options)
        for completion, gold, options in zip(completions, answer, choices, strict=True)
    ]
    return map_within_deadline(
        _score_job, jobs, timeout_s=timeout_s, deadline_s=batch_deadline_s, default=0.0
    )


def _score_job(job: tuple[str, str, list[str] | None], timeout_s: float) -> float:
    return score_response(*job, timeout_s=timeout_s)


def score_response(
    response: str, gold: str, choices: list[str] | None = None, *, timeout_s: float
) -> float:
    """The accuracy reward of one response: 1.0 if its last box is equivalent to ``gold``."""
    boxed = extract_boxed(response)
    return (
        1.0 if boxed and is_equivalent(boxed, gold, choices=choices, timeout_s=timeout_s) else 0.0
    )


_AFTER_BOX_RE = re.compile(r"[\s.$*]*(?:\\[\])][\s.$*]*)?")  # "$.", "\]", "**" may close it


def format_reward(completions: Sequence[Completion], **kwargs: Any) -> list[float]:
    """1.0 where the response reasons first and ends with a single non-empty ``\\boxed{}``.

    "Reasons first": some word characters before the box. "Ends with": after the box only
    closing math delimiters, a period or spaces. Two boxes, a bare box or a box followed
    by more text get 0.0. Only the last ``MAX_SCAN_CHARS`` characters are checked.

    >>> format_reward([r"2+2 is four, so $\\boxed{4}$.", r"\\boxed{4}", r"\\boxed{4} because", r"a \\boxed{}"])
    [1.0, 0.0, 0.0, 0.0]
    """
    del kwargs  # TRL passes every dataset column
    return [1.0 if _well_formatted(completion_text(c)) else 0.0 for c in completions]


def _well_formatted(response: str) -> bool:
    tail = response[-MAX_SCAN_CHARS:]
    boxes = find_boxed(tail)
    if len(boxes) != 1 or not boxes[0].content:
        return False
    reasoning = response[: len(response) - len(tail) + boxes[0].start]
    return bool(re.search(r"\w", reasoning)) and bool(_AFTER_BOX_RE.fullmatch(tail[boxes[0].end :]))


REWARD_FUNCS: dict[str, RewardFunc] = {"accuracy": accuracy_reward, "format": format_reward}


def bounded_reward_funcs(timeout_s: float, batch_deadline_s: float | None) -> dict[str, RewardFunc]:
    """REWARD_FUNCS with the accuracy reward's time bounds set (GRPO: from its config)."""
    accuracy = functools.partial(
        accuracy_reward, timeout_s=timeout_s, batch_deadline_s=batch_deadline_s
    )
    return {**REWARD_FUNCS, "accuracy": functools.update_wrapper(accuracy, accuracy_reward)}


def get_reward_func(name: str) -> RewardFunc:
    """The reward function registered as ``name``.

    >>> get_reward_func("accuracy").__name__
    'accuracy_reward'
    >>> get_reward_func("length")
    Traceback (most recent call last):
    ...
    ValueError: unknown reward function 'length'; valid names: accuracy, format
    """
    try:
        return REWARD_FUNCS[name]
    except KeyError:
        valid = ", ".join(sorted(REWARD_FUNCS))
        raise ValueError(f"unknown reward function {name!r}; valid names: {valid}") from None


CHECK_METRICS = ("reward/timeouts", "reward/too_big", "reward/verifier_errors")
"""Answer checks that ended without a plain verdict (each scored 0), summed over ranks."""


def check_metrics_since(before: Mapping[str, int]) -> dict[str, float]:
    """CHECK_METRICS for the checks since ``before`` (a ``verifier.counts()`` snapshot):
    over the time bound or past the batch deadline, refused as too big, failed."""
    now = counts()
    since = {key: now[key] - before[key] for key in now}
    return {
        "reward/timeouts": float(since["timeouts"] + since["past_deadline"]),
        "reward/too_big": float(since["too_big"]),
        "reward/verifier_errors": float(since["errors"]),
    }


def combine_rewards(
    per_func: Mapping[str, Sequence[float]], weights: Mapping[str, float]
) -> list[float]:
    """Weighted sum of per-function rewards, per completion.

    A function without a weight counts with 1.0 (TRL's default); a weight naming no
    function, or lists of different lengths, raise ValueError.

    >>> combine_rewards({"accuracy": [1.0, 0.0], "format": [1.0, 1.0]}, {"format": 0.5})
    [1.5, 0.5]
    """
    unknown = sorted(set(weights) - set(per_func))
    if unknown:
        raise ValueError(f"weights for unknown reward functions {unknown}; have {sorted(per_func)}")
    lengths = {name: len(rewards) for name, rewards in per_func.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"reward lists differ in length: {lengths}")
    n_completions = next(iter(lengths.values()), 0)
    return [
        sum(weights.get(name, 1.0) * rewards[i] for name, rewards in per_func.items())
        for i in range(n_completions)
    ]
