"""One copy of every image data_prep wrote, shared by its SFT, RL and eval datasets.

The same picture often feeds several rows: one file given as both `data.sft_files` and
`data.rl_files`, the SFT validation rows cut from the same source, benchmarks that ask several
questions about one figure. data_prep therefore writes each distinct encoded image once, into
the image store (a `save_to_disk` dataset of `key`, `image` rows: its own KFP artifact, `images`),
and the datasets' `images` column holds keys into it: the sha256 of the image's encoded bytes.

A stage is given the store with its dataset (the `images` input); without one, it takes the
`images/` folder beside the dataset's folder when there is one, the layout data_prep writes
(`--output DIR` gives DIR/sft, DIR/rl, DIR/eval, DIR/images), as datasets resolve an image path
relative to the data file. Readers open the store memory-mapped, map key -> row once (64 hex
characters per image: about 10 MB for 100,000 images) and read one image's bytes when a batch
needs it, so resident memory does not grow with the images' size. Datasets users bring
themselves (images inline, datasets' usual `Image` feature) need no store: `store_for` tells the
two apart by the column's type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from coldstart.common.errors import InputError
from coldstart.common.image_io import open_image

KEY_COLUMN = "key"
IMAGE_COLUMN = "image"
STORE_FEATURES = datasets.Features(
    {KEY_COLUMN: datasets.Value("string"), IMAGE_COLUMN: datasets.Image()}
)
IMAGE_KEYS = datasets.List(datasets.Value("string"))  # the `images` column of data_prep's datasets
STORE_FLAG = "images"  # the stages' input (CLI flag, component input) that takes the store
STORE_DIR = "images"  # the store's folder beside sft/, rl/ and eval/ in data_prep's layout


def image_key(encoded: bytes) -> str:
    """The store's key of an encoded image: equal bytes, one stored copy."""
    return hashlib.sha256(encoded).hexdigest()


def holds_keys(split: datasets.Dataset) -> bool:
    """Whether `split`'s images column holds store keys (data_prep's output) rather than images."""
    feature = split.features.get("images")
    inner = getattr(feature, "feature", None)
    return isinstance(inner, datasets.Value) and inner.dtype == "string"


class ImageStore:
    """data_prep's image store, opened memory-mapped: encoded or decoded images by key."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            loaded = datasets.load_from_disk(str(self.folder))
        except FileNotFoundError:
            raise InputError(
                f"{self.folder}: not an image store (expected data_prep's images/ output, "
                "a dataset saved with datasets.save_to_disk)"
            ) from None
        if not isinstance(loaded, datasets.Dataset) or set(loaded.column_names) != set(
            STORE_FEATURES
        ):
            raise InputError(
                f"{self.folder}: not an image store: expected one dataset with columns "
                f"{sorted(STORE_FEATURES)} (data_prep's images/ output)"
            )
        self._images = loaded.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
        self._rows = {key: row for row, key in enumerate(loaded[KEY_COLUMN])}

    def __len__(self) -> int:
        return len(self._rows)

    def encoded(self, key: str) -> dict[str, Any]:
        """The image as datasets stores it (`{bytes, path}`), read from the memory-mapped file."""
        row = self._rows.get(key)
        if row is None:
            raise InputError(
                f"image {key[:16]}... is not in the image store {self.folder}: the dataset and the "
                "store come from different data_prep runs; give the images/ output of the run "
                "that wrote the dataset"
            )
        value: dict[str, Any] = self._images[row][IMAGE_COLUMN]
        return value

    def decoded(self, key: str) -> Image.Image:
        """The image in its own mode, as datasets' `Image` feature decodes it (the processor
        converts to RGB)."""
        return open_image(self.encoded(key), None).image

    def encoded_row(self, keys: Sequence[str] | None) -> list[dict[str, Any]]:
        """One row's images still encoded, for readers that decode later (eval)."""
        return [self.encoded(key) for key in keys or []]

    def decoded_row(self, keys: Sequence[str] | None) -> list[Image.Image]:
        """One row's images as the processor takes them."""
        return [self.decoded(key) for key in keys or []]


def store_for(
    split: datasets.Dataset,
    store: str | Path | None,
    folder: str | Path,
    error: type[InputError] = InputError,
) -> ImageStore | None:
    """The store `split` (read from `folder`) needs: `store` when given, else the images/ folder
    beside `folder`; None when its images are inline.

    A dataset of keys without a store cannot be trained on: the error names the input to give.
    """
    if not holds_keys(split):
        return None
    beside = Path(folder).parent / STORE_DIR
    if store is None and not (beside / "state.json").is_file():
        raise error(
            f"{folder}: its images are keys into data_prep's image store, and there is no "
            f"{STORE_DIR}/ beside it; give the store (--{STORE_FLAG} DIR: data_prep's images/ "
            f"output, in a pipeline the data_prep task's `{STORE_FLAG}` artifact)"
        )
    return ImageStore(store if store is not None else beside)


@dataclass(frozen=True)
class _DecodeFromStore:
    """datasets' format transform that turns a batch's image keys into decoded images."""

    store: ImageStore

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if "images" in batch:
            batch["images"] = [self.store.decoded_row(keys) for keys in batch["images"]]
        return batch


def with_decoded_images(split: datasets.Dataset, store: ImageStore | None) -> datasets.Dataset:
    """`split` whose rows, when indexed, carry decoded images as datasets' `Image` feature gives
    them: stages index both kinds of dataset alike. Raw reads (`to_dict`, arrow format) still see
    the keys."""
    return split if store is None else split.with_transform(_DecodeFromStore(store))
