"""The per-sample predictions table, written chunk by chunk (memory does not grow with rows).

Three files in one folder, appended together: `predictions.parquet` (pyarrow's
`ParquetWriter`, one row group per chunk), `predictions.csv` and `predictions.json` in
MLflow's table layout (pandas' "split" orient: `{"columns": [...], "data": [[...], ...]}`,
which the MLflow UI shows as a table), the JSON array written row by row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TABLE_FILE = "predictions.json"
FILES = ("predictions.parquet", "predictions.csv", TABLE_FILE)
BASE_COLUMNS = ("model", "benchmark", "id", "response", "gold", "correct", "extracted")
TAIL_COLUMNS = ("reflection", "finish_reason", "error", "num_tokens", "info")


def columns_for(modes: Sequence[str]) -> list[str]:
    """`correct`/`extracted` are the first mode's; each mode also has its own pair."""
    per_mode = [f"{kind}_{mode}" for mode in modes for kind in ("correct", "extracted")]
    return [*BASE_COLUMNS, *per_mode, *TAIL_COLUMNS]


def _arrow_type(column: str) -> pa.DataType:
    if column == "correct" or column.startswith("correct_") or column == "reflection":
        return pa.bool_()
    if column == "num_tokens":
        return pa.int64()
    return pa.string()


class PredictionWriter:
    """`write(rows)` appends to all three files; `close()` finishes them (also on error)."""

    def __init__(self, folder: Path, columns: Sequence[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.columns = list(columns)
        self.schema = pa.schema([(c, _arrow_type(c)) for c in self.columns])
        self._parquet = pq.ParquetWriter(folder / FILES[0], self.schema)
        self._csv_file = (folder / FILES[1]).open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(self.columns)
        self._json = (folder / FILES[2]).open("w", encoding="utf-8")
        self._json.write(json.dumps({"columns": self.columns})[:-1] + ', "data": [')
        self._rows = 0

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        values = [[row.get(c) for c in self.columns] for row in rows]
        table = pa.table(
            {c: [v[i] for v in values] for i, c in enumerate(self.columns)}, schema=self.schema
        )
        self._parquet.write_table(table)
        self._csv.writerows(values)
        for row in values:
            self._json.write(("," if self._rows else "") + json.dumps(row, ensure_ascii=False))
            self._rows += 1

    def close(self) -> list[Path]:
        self._parquet.close()
        self._csv_file.close()
        self._json.write("]}")
        self._json.close()
        return [self.folder / name for name in FILES]
