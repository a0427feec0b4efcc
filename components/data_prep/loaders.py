"""Read users' datasets (parquet, jsonl, `save_to_disk` folders; local or s3://) into records."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from components.common.config import DatasetSource
from components.data_prep.records import DataError, RowError, build_record, resolve_columns

log = logging.getLogger(__name__)


@dataclass
class LoadStats:
    rows: int = 0
    skipped: int = 0


def _local_copy(uri: str, cache_dir: Path) -> Path:
    if uri.startswith("s3://"):
        from components.common.storage import materialize

        return Path(materialize(uri, cache_dir / "inputs"))
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"{uri}: no such file or folder")
    return path


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf_disk"
        if any(path.glob("*.parquet")):
            return "parquet"
        if any(path.glob("*.jsonl")):
            return "jsonl"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format; set format: parquet | jsonl | hf_disk")


def open_table(path: Path, fmt: str, split: str | None) -> datasets.Dataset:
    """Open without decoding images: the validator decodes each one itself to name the bad row."""
    try:
        if fmt == "hf_disk":
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                name = split or ("train" if "train" in loaded else next(iter(loaded)))
                if name not in loaded:
                    raise DataError(f"{path}: no split {name!r}; splits: {list(loaded)}")
                loaded = loaded[name]
            return _undecoded(loaded)
        files = sorted(path.glob(f"*.{fmt}")) if path.is_dir() else [path]
        builder = datasets.Dataset.from_parquet if fmt == "parquet" else datasets.Dataset.from_json
        return _undecoded(builder([str(f) for f in files]))
    except DataError:
        raise
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as exc:
        raise DataError(f"{path}: cannot be read as {fmt} ({exc})") from exc


def _undecoded(table: datasets.Dataset) -> datasets.Dataset:
    """Cast Image features to raw {bytes, path} so a corrupt image fails in our validator, per row."""
    for name, feature in table.features.items():
        if isinstance(feature, datasets.Image):
            table = table.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, (datasets.List, datasets.Sequence)) and isinstance(
            getattr(feature, "feature", None), datasets.Image
        ):
            table = table.cast_column(name, datasets.List(datasets.Image(decode=False)))
    return table


def iter_records(
    source: DatasetSource,
    *,
    cache_dir: Path,
    min_pixels: int,
    max_pixels: int,
    needs_solution: bool,
    skip_invalid: bool,
    stats: LoadStats,
) -> Iterator[dict[str, Any]]:
    """Yield validated records; a bad row raises DataError naming file and row unless skipped."""
    path = _local_copy(source.uri, cache_dir)
    fmt = detect_format(path, source.format)
    table = open_table(path, fmt, source.split)
    columns = resolve_columns(
        table.column_names, source.columns, source.uri, ("images", "problem", "answer")
    )
    base_dir = path if path.is_dir() else path.parent
    stem = Path(source.uri.rstrip("/")).name
    for index, row in enumerate(table):
        try:
            record = build_record(
                row,
                columns,
                base_dir=base_dir,
                min_pixels=min_pixels,
                max_pixels=max_pixels,
                needs_solution=needs_solution,
                fallback_id=f"{stem}-{index}",
            )
        except RowError as exc:
            if not skip_invalid:
                raise DataError(
                    f"{source.uri}: row {index}: {exc} (set data.skip_invalid: true to skip such rows)"
                ) from None
            log.warning("%s: row %d skipped: %s", source.uri, index, exc)
            stats.skipped += 1
            continue
        stats.rows += 1
        yield record
