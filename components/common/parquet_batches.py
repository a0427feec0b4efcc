"""Parquet read in bounded memory: one row group at a time.

`pyarrow.parquet.ParquetFile.iter_batches` reads ahead of its consumer: iterating a 480 MB file
of 10 MB row groups held ~470 MB at the end, whatever the batch size (pyarrow 25, measured in
bench/eval_memory.py). Reading row group by row group holds one group (peak 229 MB on the
same file), which is what a stage that streams a benchmark or a user's dataset needs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


def iter_parquet_batches(
    parquet: pq.ParquetFile, batch_size: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """The file's rows in order, `batch_size` rows a batch, one row group in memory at a time."""
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=columns)
        yield from table.to_batches(max_chunksize=batch_size)
