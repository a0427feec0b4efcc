"""Datasets that data_prep wrote with `save_to_disk`, opened memory-mapped by the stages that
train on them: Arrow files on disk, rows (and their images) read only when indexed.

One place for the checks every reader makes: that the folder is a saved dataset, which split
is the training one, and that the columns a stage needs are there, each failure an error that
names the folder and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets

from coldstart.common.errors import InputError


def load_splits(
    path: str | Path, expected: str, error: type[InputError] = InputError
) -> dict[str, datasets.Dataset]:
    """The splits of a saved Dataset or DatasetDict (a bare Dataset is the `train` split).

    `expected` names what should be there (e.g. "data_prep's sft/ output") for the error.
    """
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise error(
            f"{path}: not a dataset saved with datasets.save_to_disk (expected {expected}; "
            "run data_prep first)"
        ) from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    if "train" not in loaded:
        raise error(f"{path}: no 'train' split (found {sorted(loaded)})")
    return dict(loaded)


def require_columns(
    split: datasets.Dataset,
    columns: Sequence[str],
    where: str,
    error: type[InputError] = InputError,
) -> None:
    """Every column of `columns` is in `split`; `where` names the folder and split."""
    missing = [c for c in columns if c not in split.column_names]
    if missing:
        raise error(f"{where}: missing columns {missing} (has {split.column_names})")


def load_with_images(
    path: str | Path, images: str | Path | None = None
) -> datasets.Dataset | datasets.DatasetDict:
    """A saved dataset whose rows, when indexed, carry decoded images: data_prep's image keys are
    looked up in its image store (`images`, else the images/ folder beside `path`), inline images
    decode as usual. For notebooks and tests that look at data_prep's output; the stages load
    through `load_splits`."""
    from coldstart.common.image_store import store_for, with_decoded_images

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.Dataset):
        return with_decoded_images(loaded, store_for(loaded, images, path))
    store = store_for(next(iter(loaded.values())), images, path)
    return datasets.DatasetDict({k: with_decoded_images(v, store) for k, v in loaded.items()})
