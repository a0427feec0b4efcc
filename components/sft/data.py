"""Load the SFT set and check every row before the first step, not at step 10,000.

The set stays memory-mapped (datasets' Arrow files on disk): the checks read text columns and
image headers batch by batch, and the collator decodes a batch's images when it is trained on.
data_prep's sets hold image keys into its image store (components/common/image_store.py): the
loaded splits decode them from the store when a row is indexed, as inline images would be.

Checks that need no model run (an empty answer, reserved tokens in the text, sequences longer than
`sft.max_length`) happen here, with the row ids in the message. Lengths are computed without
decoding pixels: the text is tokenised once and each image contributes the number of tokens the
image processor will give it, read from the image header, so checking a 100K-row set takes
seconds. Rows whose answer is too long are truncated (`sft.overlong: truncate`) or rejected
(`error`); a row whose prompt and image tokens alone do not fit cannot be truncated without cutting
image tokens, so truncate mode drops it (logged and counted) and error mode rejects it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from coldstart.common.config import SFTConfig
from coldstart.common.errors import InputError
from coldstart.common.image_store import ImageStore, store_for, with_decoded_images
from coldstart.common.prompts import prompt_messages, sft_messages
from coldstart.common.saved_datasets import load_splits, require_columns
from coldstart.common.token_counts import image_sizes, image_token_count

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "images", "problem", "solution")
SHOWN_IDS = 5  # ids quoted in an error message; the count says how many more


class SFTDataError(InputError):
    """An SFT set that cannot be trained on; the message names the split, rows and fix."""


@dataclass(frozen=True)
class RowLength:
    """Tokens of one row with image placeholders expanded: whole conversation, and prompt only."""

    row_id: str
    total: int
    prompt: int


@dataclass
class SFTSplits:
    """The splits to check and train on, and the image store their keys point into (if any)."""

    train: datasets.Dataset
    validation: datasets.Dataset | None
    store: ImageStore | None


@dataclass
class CheckedSplit:
    dataset: datasets.Dataset
    truncated: list[str]
    dropped: list[str]
    max_tokens: int


def load_sft_splits(data_dir: str | Path, images: str | Path | None = None) -> SFTSplits:
    """The `train` split and the (possibly absent or empty) `validation` split of a data_prep SFT
    set; `images` is data_prep's image store, needed when the set holds image keys."""
    path = Path(data_dir)
    splits = load_splits(path, "data_prep's sft/ output", SFTDataError)
    train, validation = splits["train"], splits.get("validation")
    for name, split in (("train", train), ("validation", validation)):
        if split is not None:
            require_columns(split, REQUIRED_COLUMNS, f"{path} split {name!r}", SFTDataError)
    if len(train) == 0:
        raise SFTDataError(f"{path}: the train split is empty")
    store = store_for(train, images, path, SFTDataError)
    if validation is None or not len(validation):
        validation = None
    return SFTSplits(
        with_decoded_images(train, store),
        with_decoded_images(validation, store) if validation is not None else None,
        store,
    )


def _shown(ids: list[str]) -> str:
    more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return f"{ids[:SHOWN_IDS]}{more}"


def reserved_tokens(processor: Any) -> list[str]:
    """Special tokens that must not appear in row text: each would shift the image or turn markers."""
    return list(processor.tokenizer.all_special_tokens)


def check_text(rows: dict[str, list], processor: Any, split: str) -> None:
    """Every row needs an assistant answer, and no text may contain the template's special tokens."""
    no_answer = [
        str(i) for i, s in zip(rows["id"], rows["solution"], strict=False) if not (s or "").strip()
    ]
    if no_answer:
        raise SFTDataError(
            f"split {split!r}: {len(no_answer)} rows have no assistant answer (empty 'solution'): {_shown(no_answer)}; "
            "SFT needs the target chain of thought in 'solution' (fix or drop these rows in data_prep)"
        )
    reserved = reserved_tokens(processor)
    bad = [
        f"{i} ({tok})"
        for i, p, s in zip(rows["id"], rows["problem"], rows["solution"], strict=False)
        for tok in reserved
        if tok in (p or "") or tok in s
    ]
    if bad:
        raise SFTDataError(
            f"split {split!r}: rows contain reserved chat/vision tokens in their text: {_shown(bad)}; "
            "remove them (they would desynchronise the image tokens from the pixels)"
        )


def row_lengths(
    ds: datasets.Dataset, processor: Any, system_prompt: str, store: ImageStore | None = None
) -> list[RowLength]:
    rows = ds.select_columns(["id", "problem", "solution"]).to_dict()
    sizes = image_sizes(ds, store)
    render = processor.apply_chat_template
    full, prompts = [], []
    for problem, solution, imgs in zip(rows["problem"], rows["solution"], sizes, strict=False):
        full.append(
            render(sft_messages(problem, solution, system_prompt, len(imgs)), tokenize=False)
        )
        prompts.append(
            render(
                prompt_messages(problem, system_prompt, len(imgs)),
                tokenize=False,
                add_generation_prompt=True,
            )
        )
    tok = processor.tokenizer
    n_full = [len(ids) for ids in tok(full, add_special_tokens=False)["input_ids"]]
    n_prompt = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    out = []
    for row_id, total, prompt, imgs in zip(rows["id"], n_full, n_prompt, sizes, strict=False):
        extra = sum(
            image_token_count(processor, w, h) - 1 for w, h in imgs
        )  # each placeholder was 1 token
        out.append(RowLength(str(row_id), total + extra, prompt + extra))
    return out


def check_split(
    ds: datasets.Dataset,
    processor: Any,
    cfg: SFTConfig,
    split: str,
    store: ImageStore | None = None,
) -> CheckedSplit:
    """Validate a split and apply `sft.overlong`; returns the rows to train on and what was done.
    `store` is the image store when the split holds image keys."""
    check_text(ds.select_columns(["id", "problem", "solution"]).to_dict(), processor, split)
    lengths = row_lengths(ds, processor, cfg.system_prompt, store)
    limit = cfg.max_length
    overlong = [r for r in lengths if r.total > limit]
    unfit = [
        r for r in overlong if r.prompt >= limit
    ]  # not even one answer token fits after the images
    if overlong and cfg.overlong == "error":
        shown = [f"{r.row_id} ({r.total} tokens)" for r in overlong]
        raise SFTDataError(
            f"split {split!r}: {len(overlong)} rows are longer than sft.max_length={limit} tokens "
            f"(image tokens included): {_shown(shown)}; raise sft.max_length, lower data.max_pixels, "
            "or set sft.overlong=truncate"
        )
    dropped = [r.row_id for r in unfit]
    if dropped:
        log.warning(
            "sft %s: dropped %d rows whose prompt + image tokens exceed sft.max_length=%d: %s",
            split,
            len(dropped),
            limit,
            _shown(dropped),
        )
    if len(dropped) == len(lengths):
        raise SFTDataError(
            f"split {split!r}: every row's prompt + image tokens exceed sft.max_length={limit}; "
            "raise sft.max_length or lower data.max_pixels"
        )
    keep = [i for i, r in enumerate(lengths) if not (r.total > limit and r.prompt >= limit)]
    truncated = [r.row_id for r in overlong if r.prompt < limit]
    if truncated:
        log.info(
            "sft %s: %d rows will have their answer truncated to %d tokens",
            split,
            len(truncated),
            limit,
        )
    kept = ds if len(keep) == len(ds) else ds.select(keep)
    return CheckedSplit(kept, truncated, dropped, max(r.total for r in lengths))
