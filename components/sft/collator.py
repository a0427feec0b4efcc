"""Turn SFT rows into a training batch whose labels cover the assistant's answer only.

The chat template marks the assistant turn with `{% generation %}`, so the processor returns an
`assistant_masks` aligned with the tokens *after* image placeholders were expanded. Labels are the
input ids where that mask is 1 and -100 everywhere else: system prompt, user turn, image tokens and
padding never contribute to the loss. Processing happens per batch (images are not cached on disk),
the way TRL's VLM collators do it, so a 100K-row set needs no pre-tokenised copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from coldstart.common.errors import InputError
from coldstart.common.prompts import sft_messages

IGNORE_INDEX = -100
# Every per-token tensor the processor returns; they are truncated together.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "assistant_masks")


def conversation(row: dict[str, Any], system_prompt: str) -> list[dict[str, Any]]:
    """The row's chat messages with its images placed into the user turn's image slots."""
    images = list(row.get("images") or [])
    messages = sft_messages(row["problem"], row["solution"], system_prompt, len(images))
    slots = iter(images)
    for message in messages:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") == "image":
                    part["image"] = next(slots)
    return messages


def labels_from_mask(
    input_ids: torch.Tensor, assistant_masks: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) labels: the token id where the assistant spoke (and not padding), else -100."""
    keep = assistant_masks.bool() & attention_mask.bool()
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def truncate_batch(
    batch: dict[str, Any], max_length: int, image_token_id: int, row_ids: list[str]
) -> dict[str, Any]:
    """Cut right-padded sequences to `max_length` tokens, refusing to cut through image tokens.

    A cut inside the image placeholders would leave `pixel_values` describing more patches than
    the text has slots for; the model would then fail (or worse, misalign) deep in the forward.
    `data.check_rows` drops or rejects such rows up front, so reaching the error here is a bug.
    """
    if batch["input_ids"].shape[1] <= max_length:
        return batch
    ids = batch["input_ids"]
    lost = (ids[:, max_length:] == image_token_id).any(dim=1)
    if lost.any():
        bad = [row_ids[i] for i in lost.nonzero().flatten().tolist()]
        raise InputError(
            f"rows {bad}: truncating to sft.max_length={max_length} would cut inside the image tokens; "
            "raise sft.max_length or lower data.max_pixels"
        )
    for key in SEQUENCE_KEYS:
        if key in batch:
            batch[key] = batch[key][:, :max_length]
    return batch


@dataclass
class SFTCollator:
    """Rows (`id`, `images`, `problem`, `solution`) -> model inputs + assistant-only `labels`.

    Keeps `mm_token_type_ids`: without it Qwen2.5-VL silently falls back to 1-D positions.
    """

    processor: Any
    system_prompt: str
    max_length: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.processor.apply_chat_template(
            [conversation(row, self.system_prompt) for row in rows],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "right"},
        )
        image_token_id = self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        batch = truncate_batch(
            dict(batch), self.max_length, image_token_id, [str(r.get("id")) for r in rows]
        )
        batch["labels"] = labels_from_mask(
            batch["input_ids"], batch.pop("assistant_masks"), batch["attention_mask"]
        )
        return batch
