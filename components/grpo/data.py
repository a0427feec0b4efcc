"""The RL prompts: load the dataset, and decide which rows each rollout step uses.

The order is a pure function of (seed, step): epoch e is a seeded permutation of the rows,
and step s takes positions s*B .. s*B + B - 1 of the concatenated epochs. A run resumed at
step s therefore sees exactly the prompts the uninterrupted run would have seen.

The dataset stays memory-mapped (datasets' Arrow files on disk): a step reads and decodes only
its own rows' images (`dataset[indices]`), never the whole set; data_prep's image keys are
decoded from its image store at that moment (components/common/image_store.py).

Prompts longer than `grpo.max_prompt_length` (image tokens included) are dropped once, when
the set is loaded (`load_rl_prompts`), never cut: a cut could split an image. Their lengths
are measured as the processor will encode them, without decoding pixels
(components/common/token_counts.py). Every step's prompts then fit, and every rank of a
data-parallel run gets the same number of them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import torch

from coldstart.common.config import GRPOConfig
from coldstart.common.errors import InputError
from coldstart.common.generation import PromptInput
from coldstart.common.image_store import ImageStore, store_for, with_decoded_images
from coldstart.common.saved_datasets import load_splits, require_columns
from coldstart.common.token_counts import prompt_lengths

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("images", "problem", "answer")


class PromptsTooLongError(InputError):
    """No row of the RL set fits in grpo.max_prompt_length."""


def _load(
    path: str | Path, images: str | Path | None
) -> tuple[datasets.Dataset, ImageStore | None]:
    loaded = load_splits(path, "data_prep's rl/ output")["train"]
    require_columns(loaded, REQUIRED_COLUMNS, f"{path}: RL dataset")
    if len(loaded) == 0:
        raise InputError(f"{path}: RL dataset is empty")
    return loaded, store_for(loaded, images, path)


def load_rl_dataset(path: str | Path, images: str | Path | None = None) -> datasets.Dataset:
    """A `save_to_disk` folder holding a Dataset (or a DatasetDict with a `train` split);
    `images` is data_prep's image store, needed when the rows hold image keys."""
    return with_decoded_images(*_load(path, images))


def load_rl_prompts(
    path: str | Path, images: str | Path | None, processor: Any, cfg: GRPOConfig
) -> tuple[datasets.Dataset, dict[str, float]]:
    """The RL set without the rows whose prompt is longer than `cfg.max_prompt_length` tokens
    (chat template, system prompt and image tokens, as `processor` encodes them), and what
    loading found: `data/rows` (kept), `data/dropped_too_long`, `data/longest_prompt` (of all),
    `data/rows_without_image` (kept). No row left is a PromptsTooLongError."""
    loaded, store = _load(path, images)
    lengths, n_images = prompt_lengths(loaded, processor, cfg.system_prompt, store)
    limit = cfg.max_prompt_length
    keep = [i for i, n in enumerate(lengths) if n <= limit]
    if not keep:
        raise PromptsTooLongError(
            f"{path}: every prompt of the RL set ({len(lengths)} rows) is longer than "
            f"grpo.max_prompt_length={limit} tokens (image tokens included; shortest {min(lengths)}); "
            "raise grpo.max_prompt_length or lower grpo.max_pixels"
        )
    dropped = len(lengths) - len(keep)
    if dropped:
        log.warning(
            "grpo: dropped %d of %d RL rows whose prompt is longer than grpo.max_prompt_length=%d "
            "tokens (image tokens included; the longest has %d)",
            dropped, len(lengths), limit, max(lengths),
        )  # fmt: skip
    metrics = {
        "data/rows": float(len(keep)),
        "data/dropped_too_long": float(dropped),
        "data/longest_prompt": float(max(lengths)),
        "data/rows_without_image": float(sum(not n_images[i] for i in keep)),
    }
    kept = loaded if not dropped else loaded.select(keep)
    return with_decoded_images(kept, store), metrics


class PromptOrder:
    """Row indices of rollout step `step`: seeded per-epoch shuffles, resumable from the step alone."""

    def __init__(self, num_rows: int, batch_size: int, seed: int) -> None:
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.num_rows, generator=gen).tolist()}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [
            self._perm(pos // self.num_rows)[pos % self.num_rows]
            for pos in range(start, start + self.batch_size)
        ]

    def epoch(self, step: int) -> float:
        return step * self.batch_size / self.num_rows

    def state(self) -> dict[str, int]:
        return {"num_rows": self.num_rows, "batch_size": self.batch_size, "seed": self.seed}


def to_prompts(rows: dict[str, list[Any]]) -> list[PromptInput]:
    """Columnar rows (``dataset[indices]``) -> PromptInput per row."""
    return [
        PromptInput(problem=p, images=list(imgs or []))
        for p, imgs in zip(rows["problem"], rows["images"], strict=True)
    ]


def reward_columns(rows: dict[str, list[Any]], group_size: int) -> dict[str, list[Any]]:
    """Every non-image column, each value repeated for the G completions of its row (TRL's convention)."""
    return {
        k: [v for v in values for _ in range(group_size)]
        for k, values in rows.items()
        if k != "images"
    }
