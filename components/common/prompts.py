"""The chat messages every stage builds from a row: one place, so SFT, GRPO and eval agree.

A mismatch between the prompt the model was fine-tuned on and the prompt it is rewarded or
evaluated on is a silent accuracy loss; building all of them here makes it impossible.
"""

from __future__ import annotations

from typing import Any


def prompt_messages(problem: str, system_prompt: str, n_images: int) -> list[dict[str, Any]]:
    """System prompt, then the user turn: the image placeholders first, then the problem text."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": problem})
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": content})
    return messages


def sft_messages(
    problem: str, solution: str, system_prompt: str, n_images: int
) -> list[dict[str, Any]]:
    """The prompt plus the assistant's structured chain-of-thought answer (the SFT target)."""
    return [
        *prompt_messages(problem, system_prompt, n_images),
        {"role": "assistant", "content": solution},
    ]
