"""Memory stays flat in the number of rows.

The in-memory data_prep held every decoded image until the end (0.5 MB a row for the 400x400
JPEGs here, 3 MB for 1000x1000); streaming holds batches of at most 100 rows (the Arrow writer's),
so both runs here are past that size and the larger one must not need more memory. Peak RSS is
the child process's own high-water mark (VmHWM); the bound is generous. The numbers for 1000x1000 rows
at the paper's bounds, to compare with the goals, are in bench/results/data_scale.md.
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
    import json, re, sys
    from pathlib import Path
    from coldstart.common.config import config_from_dict
    from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep

    cfg, root = config_from_dict(json.loads(sys.argv[1])), Path(sys.argv[2])
    run_data_prep(cfg, DataPrepOutputs.under(root), root / "cache")
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
    print(int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]) / 1024)
    """
)


def peak_rss_mb(tmp_path, rows):
    parquet = tmp_path / f"in-{rows}.parquet"
    images = [encoded(gradient((400, 400), i), "JPEG") for i in range(rows)]
    image_bytes = sum(map(len, images))
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
            "min_pixels": 3136,
            "max_pixels": 200_000,
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
    # against the JPEG bytes: parquet's compression halves these smooth test images, not photos
    return float(done.stdout.strip().splitlines()[-1]), output / image_bytes


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_rows(tmp_path):
    small, _ = peak_rss_mb(tmp_path, 120)
    large, ratio = peak_rss_mb(tmp_path, 600)
    # held in memory, the 480 more decoded rows alone were ~230 MB more
    assert large < small + 60, (small, large)
    assert large < 1000 and ratio < 1.5, (large, ratio)
