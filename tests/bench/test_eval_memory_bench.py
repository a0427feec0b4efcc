"""bench/eval_memory.py end to end on a few rows: it measures every N and writes its table."""

from __future__ import annotations

import json

import pytest

from tests.bench.test_bench_quick import run_bench


@pytest.mark.slow
def test_eval_memory_bench_measures_each_size(tmp_path):
    out = tmp_path / "eval_memory"
    done = run_bench("eval_memory.py", "--rows", "24", "8", "--output", str(out))
    report = json.loads(out.with_suffix(".json").read_text())
    assert [run["rows"] for run in report["runs"]] == [8, 24]  # smallest first: the baseline
    assert [run["n"] for run in report["runs"]] == [8, 24]  # every row was scored
    assert all(run["peak_rss_mb"] > 0 for run in report["runs"])
    assert "| 24 |" in out.with_suffix(".md").read_text() and "| 24 |" in done.stdout
