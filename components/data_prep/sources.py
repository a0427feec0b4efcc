"""Users' datasets as a stream of raw rows: parquet row group by row group, jsonl line by line
(a `.json` file holding one array element by element), `save_to_disk` folders batch by batch;
local or s3://.

A source (one `DatasetSource`) is cut into units, one per file (a `save_to_disk` folder is one
unit): the unit is what a shard of a sharded run takes, what a download prefetches while the
previous one is processed, and what an error names, so a bad row is found in its own file.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from coldstart.common import storage
from coldstart.common.config import DataConfig, DatasetSource
from coldstart.common.parquet_batches import iter_parquet_batches
from coldstart.data_prep.records import DataError, RowError

log = logging.getLogger(__name__)

SPLITS = ("eval", "sft", "rl")  # eval first: its keys decide what is a leak in the others
BATCH_ROWS = 64  # rows read at a time from parquet and save_to_disk folders


@dataclass(frozen=True)
class Unit:
    """One file of a source (or a whole save_to_disk folder), with its place in the output order."""

    split: str
    source_index: int
    file_index: int
    uri: str  # the file as the user can find it (named in errors)
    fmt: str
    source: DatasetSource

    @property
    def needs_solution(self) -> bool:
        return self.split == "sft"


@dataclass(frozen=True)
class RawRow:
    """A row as read, or the reason it could not be read (a jsonl line that is not JSON)."""

    index: int
    values: dict[str, Any] | None
    error: str | None = None


def sources_of(data: DataConfig, split: str) -> list[DatasetSource]:
    return {"sft": data.sft_files, "rl": data.rl_files, "eval": data.eval_files}[split]


def list_units(data: DataConfig) -> list[Unit]:
    """Every unit of every files source, in output order (split, source, file)."""
    units: list[Unit] = []
    for split in SPLITS:
        for source_index, source in enumerate(sources_of(data, split)):
            fmt, files = _files_of(source)
            units += [
                Unit(split, source_index, file_index, uri, fmt, source)
                for file_index, uri in enumerate(files)
            ]
    return units


def _files_of(source: DatasetSource) -> tuple[str, list[str]]:
    """The format of a source and its files (the folder itself for save_to_disk)."""
    uri = source.uri.rstrip("/") if source.uri.startswith("s3://") else source.uri
    names = _folder_listing(uri)
    if names is None:  # a single file
        return _detect_format(uri, source.format, []), [uri]
    fmt = _detect_format(uri, source.format, names)
    if fmt == "hf_disk":
        return fmt, [uri]
    files = [storage.join(uri, n) for n in names if n.endswith(f".{fmt}")]
    if not files:
        raise DataError(f"{source.uri}: no *.{fmt} files in the folder (files present: {names})")
    return fmt, files


def _folder_listing(uri: str) -> list[str] | None:
    """Sorted names of a folder's direct files, or None when `uri` is a file."""
    if storage.is_s3(uri):
        if uri.endswith((".parquet", ".jsonl", ".json")):
            return None
        objects = storage.list_prefix(uri)
        if not objects:
            raise DataError(f"{uri}: no such object or prefix")
        return sorted({o[len(uri) + 1 :].split("/")[0] for o in objects})
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"{uri}: no such file or folder")
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else None


def _detect_format(uri: str, declared: str, names: Sequence[str]) -> str:
    if declared != "auto":
        return declared
    if names:
        if "dataset_info.json" in names or "dataset_dict.json" in names:
            return "hf_disk"
        for fmt in ("parquet", "jsonl"):
            if any(n.endswith(f".{fmt}") for n in names):
                return fmt
    if uri.lower().endswith(".parquet"):
        return "parquet"
    if uri.lower().endswith((".jsonl", ".json")):
        return "jsonl"
    raise DataError(f"{uri}: cannot tell the format; set format: parquet | jsonl | hf_disk")


def local_path(unit: Unit, cache_dir: Path) -> Path:
    """The unit on local disk; s3 objects are downloaded (a jsonl folder whole, for its images)."""
    if not storage.is_s3(unit.uri):
        return Path(unit.uri).expanduser()
    inputs = cache_dir / "inputs"
    if unit.fmt == "jsonl" and unit.uri != unit.source.uri:
        folder = storage.materialize(unit.source.uri, inputs)
        return folder / unit.uri.rsplit("/", 1)[-1]
    return Path(storage.materialize(unit.uri, inputs))


def prefetched(
    units: Sequence[Unit], cache_dir: Path, ahead: int = 2
) -> Iterator[tuple[Unit, Path]]:
    """Units with their local paths; the next `ahead` downloads run while a unit is processed."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="data-prefetch") as pool:
        pending = deque(pool.submit(local_path, u, cache_dir) for u in units[: ahead + 1])
        for i, unit in enumerate(units):
            path = pending.popleft().result()
            if i + ahead + 1 < len(units):
                pending.append(pool.submit(local_path, units[i + ahead + 1], cache_dir))
            yield unit, path


def open_unit(unit: Unit, path: Path) -> tuple[list[str], int | None, Iterator[RawRow]]:
    """The unit's column names, its row count when known cheaply, and its rows (read lazily)."""
    try:
        if unit.fmt == "parquet":
            parquet = pq.ParquetFile(path)
            return parquet.schema_arrow.names, parquet.metadata.num_rows, _parquet_rows(parquet)
        if unit.fmt == "hf_disk":
            table = _hf_split(path, unit)
            return table.column_names, len(table), _arrow_rows(table)
        return _jsonl_columns(path), None, _jsonl_rows(path)
    except DataError:
        raise
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise DataError(f"{unit.uri}: cannot be read as {unit.fmt} ({exc})") from exc


def _parquet_rows(parquet: pq.ParquetFile) -> Iterator[RawRow]:
    index = 0
    for batch in iter_parquet_batches(parquet, BATCH_ROWS):
        for values in batch.to_pylist():
            yield RawRow(index, values)
            index += 1


def _hf_split(path: Path, unit: Unit) -> datasets.Dataset:
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        name = unit.source.split or ("train" if "train" in loaded else next(iter(loaded)))
        if name not in loaded:
            raise DataError(f"{unit.uri}: no split {name!r}; splits: {list(loaded)}")
        loaded = loaded[name]
    return loaded


def _arrow_rows(table: datasets.Dataset) -> Iterator[RawRow]:
    """Rows with images still encoded ({bytes, path}): the validator decodes each one itself."""
    index = 0
    for batch in table.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for values in batch.to_pylist():
            yield RawRow(index, values)
            index += 1


def _jsonl_values(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, the line's object or None, why not) for every non-blank line."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                values = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield (
                    number,
                    None,
                    f"line {number} is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                )
                continue
            except json.JSONDecodeError as exc:
                yield number, None, f"line {number} is not valid JSON ({exc.msg})"
                continue
            if not isinstance(values, dict):
                yield (
                    number,
                    None,
                    f"line {number} is a JSON {type(values).__name__}, not an object",
                )
                continue
            yield number, values, None


JSON_CHUNK_CHARS = 1 << 20
MAX_JSON_ELEMENT_CHARS = 64 << 20
_JSON_SPACE = re.compile(
    r"[ \t\n\r]*"
)  # what JSON allows between tokens (always matches)  # one array element larger than this is an error, not a read


def _is_json_array(path: Path) -> bool:
    """True if the file's first non-blank character is `[` (a JSON array, not JSON lines)."""
    with path.open("rb") as raw:
        while chunk := raw.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1] == b"["
    return False


def _json_array_values(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(element number, the element or None, why not) for a file holding one JSON array,
    decoded element by element from a bounded buffer: memory holds one element, not the file.

    After an element that is not valid JSON the rest of the array cannot be found again, so
    that error ends the stream (with `skip_invalid` too: the rows before it are kept).
    """
    read = 0
    try:
        for item in _decode_json_array(path):
            read = item[0] + 1
            yield item
    except UnicodeDecodeError as exc:  # the stream cannot go on past text it cannot decode
        yield read, None, f"element {read} is not valid UTF-8 ({exc.reason})"


def _decode_json_array(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    decoder = json.JSONDecoder()
    with path.open("r", encoding="utf-8") as text:
        buffer, pos, eof = "", 0, False

        def fill(need_more: bool) -> bool:
            """Read on when the buffer has nothing unread (or `need_more`); False at the end."""
            nonlocal buffer, pos, eof
            if eof or (pos < len(buffer) and not need_more):
                return pos < len(buffer)
            chunk = text.read(max(JSON_CHUNK_CHARS, len(buffer) - pos))
            eof = not chunk
            buffer, pos = buffer[pos:] + chunk, 0
            return pos < len(buffer)

        def next_char() -> str:
            nonlocal pos
            while fill(False):
                space = _JSON_SPACE.match(buffer, pos)
                pos = space.end() if space else pos
                if pos < len(buffer):
                    return buffer[pos]
            return ""

        if next_char() != "[":
            yield 0, None, "the file is not a JSON array"
            return
        pos += 1
        number = 0
        while True:
            char = next_char()
            if char == "]":
                return
            if number and char == ",":
                pos += 1
                char = next_char()
            elif number or not char:
                yield (
                    number,
                    None,
                    f"element {number}: expected ',' or ']' ({char or 'end of file'})",
                )
                return
            while True:
                try:
                    values, end = decoder.raw_decode(buffer, pos)
                    break
                except json.JSONDecodeError as exc:
                    if eof or len(buffer) - pos > MAX_JSON_ELEMENT_CHARS:
                        yield number, None, f"element {number} is not valid JSON ({exc.msg})"
                        return
                    fill(True)
            pos = end
            if isinstance(values, dict):
                yield number, values, None
            else:
                yield (
                    number,
                    None,
                    f"element {number} is a JSON {type(values).__name__}, not an object",
                )
            number += 1


def _json_values(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """A `.json`/`.jsonl` file's objects: one JSON array, or one object per line."""
    return _json_array_values(path) if _is_json_array(path) else _jsonl_values(path)


def _jsonl_columns(path: Path) -> list[str]:
    """Every key any row has (a first pass over the text: the rows hold image paths, not pixels)."""
    names: dict[str, None] = {}
    for _, values, _ in _json_values(path):
        names.update(dict.fromkeys(values or ()))
    return list(names)


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    for index, (_, values, error) in enumerate(_json_values(path)):
        yield RawRow(index, values, error)


def row_error(unit: Unit, index: int, reason: str | RowError) -> DataError:
    return DataError(
        f"{unit.uri}: row {index}: {reason} (set data.skip_invalid: true to skip such rows)"
    )
