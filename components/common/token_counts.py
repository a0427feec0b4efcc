"""Token counts of rows without decoding pixels: text tokenised once, image tokens from headers.

Each image contributes the number of placeholder tokens the image processor will give it,
computed from its size as read from the encoded header (inside the configured pixel bounds),
so measuring a 100K-row set takes seconds. SFT checks its rows with these (sft/data.py); GRPO
drops the prompts longer than `grpo.max_prompt_length` when it loads its set (grpo/data.py).
"""

from __future__ import annotations

import io
from typing import Any

import datasets
from PIL import Image

from coldstart.common.generation import chat_prompt
from coldstart.common.image_store import ImageStore


def image_sizes(
    ds: datasets.Dataset, store: ImageStore | None = None, batch_size: int = 64
) -> list[list[tuple[int, int]]]:
    """(width, height) of every image of every row, read from the encoded headers (no decode).

    The set is memory-mapped Arrow: the images column is read `batch_size` rows at a time, so
    only one batch's encoded bytes are ever in Python (never every image of the set at once).
    Keys into the store are looked up once each: a shared image's header is read once.
    """
    images = ds.select_columns(["images"]).with_format("arrow")
    sizes: list[list[tuple[int, int]]] = []
    stored: dict[str, tuple[int, int]] = {}

    def size(image: Any) -> tuple[int, int]:
        if store is None:  # {"bytes", "path"} dicts of this batch only, not decoded
            return header_size(image)
        if image not in stored:
            stored[image] = header_size(store.encoded(image))
        return stored[image]

    for batch in images.iter(batch_size=batch_size):
        sizes += [[size(img) for img in row or []] for row in batch["images"].to_pylist()]
    return sizes


def header_size(image: dict[str, Any]) -> tuple[int, int]:
    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with Image.open(source) as opened:
        return opened.size


def image_token_count(processor: Any, width: int, height: int) -> int:
    """Placeholder tokens the processor will insert for one image of this size."""
    ip = processor.image_processor
    return int(ip.get_number_of_image_patches(height, width) // (ip.merge_size**2))


def prompt_lengths(
    ds: datasets.Dataset, processor: Any, system_prompt: str, store: ImageStore | None = None
) -> tuple[list[int], list[int]]:
    """Tokens of each row's prompt as `processor(text=chat_prompt(...), images=...)` encodes it
    (chat template, system prompt, every image's tokens), and each row's number of images.

    `ds` holds the rows as stored (image bytes, or keys into `store`), not decoded images.
    """
    sizes = image_sizes(ds, store)
    problems = ds.select_columns(["problem"]).to_dict()["problem"]
    texts = [
        chat_prompt(processor, p, len(imgs), system_prompt)
        for p, imgs in zip(problems, sizes, strict=True)
    ]
    text_tokens = [len(ids) for ids in processor.tokenizer(texts)["input_ids"]]
    lengths = [
        n + sum(image_token_count(processor, w, h) - 1 for w, h in imgs)  # each placeholder was 1
        for n, imgs in zip(text_tokens, sizes, strict=True)
    ]
    return lengths, [len(imgs) for imgs in sizes]
