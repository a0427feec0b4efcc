"""Parquet row group by row group: every row once, in order, in batches of at most the size asked."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from coldstart.common.parquet_batches import iter_parquet_batches


def test_rows_in_order_in_bounded_batches_across_row_groups(tmp_path):
    path = tmp_path / "t.parquet"
    table = pa.table({"id": list(range(250)), "text": [f"row {i}" for i in range(250)]})
    pq.write_table(table, path, row_group_size=100)  # groups of 100, 100, 50
    parquet = pq.ParquetFile(path)
    assert parquet.num_row_groups == 3
    batches = list(iter_parquet_batches(parquet, 64))
    assert [b.num_rows for b in batches] == [64, 36, 64, 36, 50]  # never across a group
    assert [row["id"] for b in batches for row in b.to_pylist()] == list(range(250))
    only_ids = list(iter_parquet_batches(parquet, 1000, columns=["id"]))
    assert [b.schema.names for b in only_ids] == [["id"]] * 3
