"""We-Math's official scoring (We-Math/We-Math, `evaluation/four_dimensional_metrics.py`).

The official reader takes the text after the last "Answer", drops `<>:.` characters and
keeps its first character if it is an option letter A-H; the verdict is that letter equal
to the gold letter. The headline is the four-dimensional score (strict and loose, see
`scoring.wemath_scores`). One addition: a response without "Answer" that boxes its
answer (the prompt the paper trains with) is read from its last box by the same rule;
the official rule would read the first character of the whole response.
"""

from __future__ import annotations

import re

from coldstart.common.answers import extract_boxed

_DROP_RE = re.compile(r"[><:.]")


def read_letter(response: str) -> str | None:
    """The option letter the official script reads from a response, or None.

    >>> read_letter("Reasoning... Answer: B. 4cm"), read_letter(r"so \\boxed{C}"), read_letter("Answer: 4cm")
    ('B', 'C', None)
    """
    if "Answer" in response:
        text = response.split("Answer")[-1]
    else:
        boxed = extract_boxed(response)
        text = response if boxed is None else boxed
    text = _DROP_RE.sub("", text.strip()).strip()
    return text[0] if text and text[0] in "ABCDEFGH" else None
