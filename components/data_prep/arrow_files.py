"""Arrow files written and read in bounded batches: a shard's parts, the final datasets and
their image store.

A part (`<split>.arrow` in a shard folder) holds prepared rows with their content key and their
place in the output order; the merge reads parts as a stream of record batches (plain reads,
no memory map, so resident memory stays flat however large the files are).

The final datasets are `datasets.save_to_disk` folders, which downstream stages open with
`datasets.load_from_disk`. They are written row by row with datasets' own `ArrowWriter`; the
folder's metadata (`state.json`, `dataset_info.json`, `dataset_dict.json`) comes from
datasets' own `save_to_disk` of an empty dataset with the same features, with only the list of
data files replaced: the layout stays whatever the installed `datasets` writes, without the
second full copy of the data that `save_to_disk` of a finished dataset would make.

Parts carry their images inline; the final datasets carry keys into the image store
(components/common/image_store.py), which `ImageStoreWriter` fills with each distinct image once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from coldstart.common.image_store import (
    IMAGE_COLUMN,
    IMAGE_KEYS,
    KEY_COLUMN,
    STORE_FEATURES,
    image_key,
)

TEXT_FEATURES = {
    name: datasets.Value("string") for name in ("id", "problem", "answer", "solution", "category")
}
FEATURES = datasets.Features({**TEXT_FEATURES, "images": IMAGE_KEYS})  # the final datasets
ORDER = ("source_index", "file_index", "row_index")
PART_FEATURES = datasets.Features(
    {
        **TEXT_FEATURES,
        "images": datasets.List(datasets.Image()),
        "key": datasets.Value("string"),
        "source_index": datasets.Value("int32"),
        "file_index": datasets.Value("int32"),
        "row_index": datasets.Value("int64"),
    }
)
MAX_SHARD_BYTES = 500 << 20  # as datasets' save_to_disk default


def part_path(shard_dir: Path, split: str) -> Path:
    return shard_dir / f"{split}.arrow"


def part_writer(shard_dir: Path, split: str) -> ArrowWriter:
    shard_dir.mkdir(parents=True, exist_ok=True)
    return ArrowWriter(features=PART_FEATURES, path=str(part_path(shard_dir, split)))


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of an Arrow stream file, one record batch in memory at a time."""
    with pa.OSFile(str(path)) as file:
        for batch in pa.ipc.open_stream(file):
            yield from batch.to_pylist()


def order_of(row: dict[str, Any]) -> tuple[int, int, int]:
    return row["source_index"], row["file_index"], row["row_index"]


class DatasetWriter:
    """One dataset (a `save_to_disk` folder), written row by row into shards of ~500 MB."""

    def __init__(self, folder: Path, features: datasets.Features = FEATURES) -> None:
        self.folder = folder
        self.features = features
        self.rows = 0
        self._files: list[Path] = []
        self._writer: ArrowWriter | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None or self._writer._num_bytes >= MAX_SHARD_BYTES:
            self._next_file()
        assert self._writer is not None
        self._writer.write({name: row[name] for name in self.features})
        self.rows += 1

    def _next_file(self) -> None:
        if self._writer is not None:
            self._writer.finalize()
        self._files.append(self.folder / f"writing-{len(self._files):05d}.arrow")
        self._writer = ArrowWriter(features=self.features, path=str(self._files[-1]))

    def close(self) -> list[Path]:
        """Finish the data files (still under their working names)."""
        if self._writer is None:
            self._next_file()
        assert self._writer is not None
        self._writer.finalize()
        return self._files


def finish_dataset(writer: DatasetWriter) -> None:
    """Make the writer's folder a save_to_disk folder: datasets' own metadata, our data files."""
    files = writer.close()
    folder, features = writer.folder, writer.features
    empty = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    empty.save_to_disk(str(folder))
    state = json.loads((folder / "state.json").read_text())
    for entry in state["_data_files"]:
        (folder / entry["filename"]).unlink()
    names = [f"data-{i:05d}-of-{len(files):05d}.arrow" for i in range(len(files))]
    for file, name in zip(files, names, strict=True):
        file.rename(folder / name)
    state["_data_files"] = [{"filename": name} for name in names]
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))


def finish_dataset_dict(folder: Path, writers: dict[str, DatasetWriter]) -> None:
    """A DatasetDict folder (`dataset_dict.json` + one folder per split) from split writers."""
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(writers)}))
    for writer in writers.values():
        finish_dataset(writer)


class ImageStoreWriter:
    """The image store of one data_prep run: each distinct encoded image written once.

    Only the keys seen stay in memory (64 characters per image), never the images.
    """

    def __init__(self, folder: Path) -> None:
        self._writer = DatasetWriter(folder, STORE_FEATURES)
        self._keys: set[str] = set()

    def put(self, image: dict[str, Any]) -> str:
        """Store a `{bytes, path}` image (once) and return its key."""
        key = image_key(image["bytes"])
        if key not in self._keys:
            self._keys.add(key)
            self._writer.write({KEY_COLUMN: key, IMAGE_COLUMN: image})
        return key

    def with_keys(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with its inline images stored and replaced by their keys."""
        return dict(row, images=[self.put(image) for image in row["images"]])

    def finish(self) -> int:
        """Write the store's metadata; returns how many images it holds."""
        finish_dataset(self._writer)
        return self._writer.rows
