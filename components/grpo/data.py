"""The RL prompts: load the dataset, and decide which rows each rollout step uses.

The order is a pure function of (seed, step): epoch e is a seeded permutation of the rows,
and step s takes positions s*B .. s*B + B - 1 of the concatenated epochs. A run resumed at
step s therefore sees exactly the prompts the uninterrupted run would have seen.

The dataset stays memory-mapped (datasets' Arrow files on disk): a step reads and decodes only
its own rows' images (`dataset[indices]`), never the whole set; data_prep's image keys are
decoded from its image store at that moment (components/common/image_store.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import torch

from coldstart.common.errors import InputError
from coldstart.common.generation import PromptInput
from coldstart.common.image_store import store_for, with_decoded_images
from coldstart.common.saved_datasets import load_splits, require_columns

REQUIRED_COLUMNS = ("images", "problem", "answer")


def load_rl_dataset(path: str | Path, images: str | Path | None = None) -> datasets.Dataset:
    """A `save_to_disk` folder holding a Dataset (or a DatasetDict with a `train` split);
    `images` is data_prep's image store, needed when the rows hold image keys."""
    loaded = load_splits(path, "data_prep's rl/ output")["train"]
    require_columns(loaded, REQUIRED_COLUMNS, f"{path}: RL dataset")
    if len(loaded) == 0:
        raise InputError(f"{path}: RL dataset is empty")
    return with_decoded_images(loaded, store_for(loaded, images, path))


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
