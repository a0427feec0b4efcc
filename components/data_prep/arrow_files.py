"""Arrow files written and read in bounded batches: a shard's parts and the final datasets.

A part (`<split>.arrow` in a shard folder) holds prepared rows with their content key and their
place in the output order; the merge reads parts as a stream of record batches (plain reads,
no memory map, so resident memory stays flat however large the files are).

The final datasets are `datasets.save_to_disk` folders, which downstream stages open with
`datasets.load_from_disk`. They are written row by row with datasets' own `ArrowWriter`; the
folder's metadata (`state.json`, `dataset_info.json`, `dataset_dict.json`) comes from
datasets' own `save_to_disk` of an empty dataset with the same features, with only the list of
data files replaced: the layout stays whatever the installed `datasets` writes, without the
second full copy of the data that `save_to_disk` of a finished dataset would make.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "solution": datasets.Value("string"),
        "category": datasets.Value("string"),
    }
)
ORDER = ("source_index", "file_index", "row_index")
PART_FEATURES = datasets.Features(
    {
        **FEATURES,
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

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows = 0
        self._files: list[Path] = []
        self._writer: ArrowWriter | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None or self._writer._num_bytes >= MAX_SHARD_BYTES:
            self._next_file()
        assert self._writer is not None
        self._writer.write({name: row[name] for name in FEATURES})
        self.rows += 1

    def _next_file(self) -> None:
        if self._writer is not None:
            self._writer.finalize()
        self._files.append(self.folder / f"writing-{len(self._files):05d}.arrow")
        self._writer = ArrowWriter(features=FEATURES, path=str(self._files[-1]))

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
    folder = writer.folder
    empty = datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
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
