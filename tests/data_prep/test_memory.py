"""Memory stays flat in the number of rows: 1000x1000 JPEG rows at the paper's pixel bounds.

The in-memory data_prep held every decoded image until the end (~3 MB a row here); streaming
holds a batch. Peak RSS is the child process's own high-water mark; the bound is generous (the
numbers to compare against the goals are in bench/results/data_scale.md).
"""

import json
import subprocess
import sys
import textwrap

import datasets
import pytest

from tests.data_prep.reference_inputs import encoded, gradient

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from components.common.config import config_from_dict
    from components.data_prep.stage import DataPrepOutputs, run_data_prep

    cfg, root = config_from_dict(json.loads(sys.argv[1])), Path(sys.argv[2])
    run_data_prep(cfg, DataPrepOutputs(root / "sft", root / "rl", root / "eval"), root / "cache")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """
)


def peak_rss_mb(tmp_path, rows):
    parquet = tmp_path / f"in-{rows}.parquet"
    images = [encoded(gradient((1000, 1000), i), "JPEG") for i in range(rows)]
    datasets.Dataset.from_dict(
        {"q": [f"Problem {i}?" for i in range(rows)], "a": ["1"] * rows, "img": images}
    ).to_parquet(str(parquet))
    del images
    cfg = {
        "output_dir": str(tmp_path),
        "sft": {"enabled": False},
        "data": {
            "source": "files",
            "rl_files": [
                {"uri": str(parquet), "columns": {"problem": "q", "answer": "a", "images": "img"}}
            ],
            "min_pixels": 262144,
            "max_pixels": 1204224,
            "num_proc": 1,
        },
    }
    out = tmp_path / f"out-{rows}"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = sum(f.stat().st_size for f in (out / "rl").iterdir())
    return float(done.stdout.strip().splitlines()[-1]), output / parquet.stat().st_size


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_rows(tmp_path):
    small, _ = peak_rss_mb(tmp_path, 30)
    large, ratio = peak_rss_mb(tmp_path, 180)
    # in memory, 150 more decoded 1-MP rows were ~450 MB more; streamed, the same batch sizes
    assert large < small + 150, (small, large)
    assert large < 1500 and ratio < 1.5, (large, ratio)
