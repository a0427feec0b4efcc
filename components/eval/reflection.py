"""The paper's first finding, measured: "aha moment" reflection phrases and whether they pay.

The paper observes that reflective phrases ("wait", "let me re-check", ...) already appear
before RL and do not by themselves go with better answers. Per model, eval counts the
responses that contain one of `eval.reflection_phrases` (case-insensitive, whole words)
and the accuracy of the responses with and without one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


def reflection_pattern(phrases: Sequence[str]) -> re.Pattern[str] | None:
    """One regex for all phrases: whole words, any case, any run of spaces inside a phrase.

    >>> bool(reflection_pattern(["let me re-check"]).search("OK. Let me  re-check: 3"))
    True
    >>> bool(reflection_pattern(["wait"]).search("the weight is 3")), reflection_pattern([])
    (False, None)
    """
    words = [r"\s+".join(map(re.escape, p.split())) for p in phrases if p.strip()]
    if not words:
        return None
    return re.compile(rf"(?<!\w)(?:{'|'.join(words)})(?!\w)", re.IGNORECASE)


@dataclass
class ReflectionTally:
    """Counts over one model's responses: with / without a reflection phrase, and right."""

    n: int = 0
    reflective: int = 0
    right_reflective: int = 0
    right_plain: int = 0

    def add(self, reflective: bool, correct: bool) -> None:
        self.n += 1
        self.reflective += reflective
        self.right_reflective += reflective and correct
        self.right_plain += (not reflective) and correct

    def metrics(self) -> dict[str, float]:
        """`share`, `accuracy_with`, `accuracy_without` (NaN where a side is empty), counts."""
        plain = self.n - self.reflective
        nan = float("nan")
        return {
            "responses": float(self.n),
            "with": float(self.reflective),
            "share": self.reflective / self.n if self.n else nan,
            "accuracy_with": self.right_reflective / self.reflective if self.reflective else nan,
            "accuracy_without": self.right_plain / plain if plain else nan,
        }
