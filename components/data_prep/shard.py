"""Prepare a shard: its share of the input units, read, validated and resized in parallel,
written as parts (one Arrow file per split) that the merge dedups into the final datasets.

One pod is a run with one shard; a sharded run (pipelines/data_shards.py) gives each pod the
units `k, k + n, k + 2n, ...` of the same listing, so together the shards cover every unit once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from coldstart.common.config import DataConfig
from coldstart.data_prep.arrow_files import part_writer
from coldstart.data_prep.parallel import available_cpus, ordered_map, worker_pool
from coldstart.data_prep.records import Chunk, RowSpec, prepare_chunk, resolve_columns
from coldstart.data_prep.sources import SPLITS, Unit, list_units, open_unit, prefetched, row_error

log = logging.getLogger(__name__)

CHUNK_ROWS = 8  # rows per worker task: enough to amortise the hand-off, small enough to balance
COUNTS_FILE = "counts.json"


def prepare_shard(
    data: DataConfig, shard: int, num_shards: int, shard_dir: Path, cache_dir: Path
) -> dict[str, int]:
    """Write `shard_dir/<split>.arrow` for this shard's units; returns (and saves) its counts."""
    units = list_units(data)[shard::num_shards]
    num_proc = data.num_proc or available_cpus()
    counts = {"rows": 0, "skipped_invalid": 0}
    writers = {split: part_writer(shard_dir, split) for split in SPLITS}
    log.info(
        "data_prep shard %d/%d: %d input files, %d workers", shard, num_shards, len(units), num_proc
    )
    with worker_pool(num_proc) as pool:
        for unit, path in prefetched(units, cache_dir):
            for index, record, error in _unit_records(unit, path, data, pool, num_proc):
                if record is None:
                    if not data.skip_invalid:
                        raise row_error(unit, index, error or "unreadable")
                    log.warning("%s: row %d skipped: %s", unit.uri, index, error)
                    counts["skipped_invalid"] += 1
                    continue
                order = {"source_index": unit.source_index, "file_index": unit.file_index}
                writers[unit.split].write({**record, **order, "row_index": index})
                counts["rows"] += 1
    for writer in writers.values():
        writer.finalize()
    (shard_dir / COUNTS_FILE).write_text(json.dumps(counts))
    return counts


def _unit_records(
    unit: Unit, path: Path, data: DataConfig, pool: ProcessPoolExecutor | None, num_proc: int
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    available, total, rows = open_unit(unit, path)
    columns = resolve_columns(
        available, unit.source.columns, unit.uri, ("images", "problem", "answer")
    )
    spec = RowSpec(
        columns=columns,
        base_dir=path if path.is_dir() else path.parent,
        min_pixels=data.min_pixels,
        max_pixels=data.max_pixels,
        needs_solution=unit.needs_solution,
        stem=Path(unit.uri.rstrip("/")).name,
    )
    wanted = list(columns.values())
    chunks = (
        Chunk(spec, [(r.index, _only(r.values, wanted), r.error) for r in batch])
        for batch in _batched(rows, CHUNK_ROWS)
    )
    progress = tqdm(
        total=total, desc=f"data_prep {unit.split}: {unit.uri}", unit="row", leave=False
    )
    with progress:
        for results in ordered_map(prepare_chunk, chunks, pool, window=4 * num_proc):
            progress.update(len(results))
            yield from results


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """itertools.batched (Python 3.12+) for 3.10."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _only(values: dict[str, Any] | None, columns: list[str]) -> dict[str, Any] | None:
    """The mapped columns of a row: what the worker needs, nothing more to pickle."""
    return None if values is None else {c: values.get(c) for c in columns}


def shard_counts(shard_dir: Path) -> dict[str, int]:
    return json.loads((shard_dir / COUNTS_FILE).read_text())
