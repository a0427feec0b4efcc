"""Eval's memory as a benchmark grows: peak RSS of the eval stage at N rows (default 1,000 and 10,000).

    .venv/bin/python bench/eval_memory.py                   # N = 1,000 and 10,000 (minutes)
    .venv/bin/python bench/eval_memory.py --rows 200 2000   # quicker

Each N is a MathVision-layout parquet (what `eval.benchmarks` reads from a mirror) whose rows
carry ~100 KB of image bytes each (a small picture with a random PNG text chunk that parquet
cannot squeeze: heavy to hold, quick to decode), scored by `run_eval` on the tiny model (configs/tiny.yaml, one new
token per answer: generation is not what is measured) in a child process. Reported: rows,
peak RSS of the child (`ru_maxrss`), seconds, and the growth from the smallest N to each larger
one next to what holding every extra row's image bytes would add. Results go to
bench/results/eval_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROW_IMAGE_BYTES = 100_000

CHILD = """
import json, resource, sys, time
from pathlib import Path
from coldstart.common.config import load_config
from coldstart.eval.stage import EvalPaths, run_eval
tmp, bench, model, config = map(Path, sys.argv[1:5])
cfg = load_config(config, [f"output_dir={tmp / 'outputs'}", "eval.max_new_tokens=1",
    "eval.batch_size=16", "eval.scoring=[strict]",
    "eval.benchmarks=[{name: mathvision, uri: " + str(bench) + "}]"])
start = time.perf_counter()
run = run_eval(cfg, {"base": str(model)}, None, tmp / "cache", EvalPaths(tmp / "work"), tmp / "pred")
print(json.dumps({"n": run.results["base"]["strict"]["mathvision"]["n"],
                  "seconds": round(time.perf_counter() - start, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def heavy_png(index: int) -> bytes:
    """A 28x28 picture carrying ~ROW_IMAGE_BYTES of text chunk (distinct per row)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("padding", random.Random(index).randbytes(ROW_IMAGE_BYTES // 2).hex())
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (index % 255, 0, 0)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_benchmark(path: Path, rows: int) -> int:
    """The parquet, 100 rows per row group; returns its size in bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for start in range(0, rows, 100):
        ids = [str(i) for i in range(start, min(rows, start + 100))]
        table = pa.table({
            "id": ids,
            "question": ["How many?"] * len(ids),
            "options": [[] for _ in ids],
            "answer": ["1"] * len(ids),
            "decoded_image": [{"bytes": heavy_png(int(i)), "path": None} for i in ids],
        })  # fmt: skip
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return path.stat().st_size


def measure(rows: int, model: Path, work: Path) -> dict:
    tmp = work / f"n{rows}"
    tmp.mkdir(parents=True)
    size = write_benchmark(tmp / "bench.parquet", rows)
    args = [str(tmp), str(tmp / "bench.parquet"), str(model), str(ROOT / "configs" / "tiny.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"eval of {rows} rows failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "rows": rows, "input_mb": round(size / 2**20, 1)}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Eval memory as the benchmark grows ({m['time']})",
        "",
        f"`python bench/eval_memory.py`; tiny model, one new token per answer, "
        f"~{ROW_IMAGE_BYTES // 1000} KB of image bytes per row; {m['cpus']} CPUs, load average "
        f"{m['load_avg_before'][0]} before, {m['load_avg_after'][0]} after.",
        "",
        "| rows | benchmark MB | eval s | peak RSS MB | growth over the smallest N, MB "
        "| if the extra rows' images were held, MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    base = report["runs"][0]
    for run in report["runs"]:
        extra = (run["rows"] - base["rows"]) * ROW_IMAGE_BYTES / 2**20
        lines.append(
            f"| {run['rows']:,} | {run['input_mb']} | {run['seconds']} | {run['peak_rss_mb']} "
            f"| {run['peak_rss_mb'] - base['peak_rss_mb']:+.1f} | {extra:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "eval_memory")
    args = parser.parse_args(argv)

    from bench.machine import machine_facts
    from coldstart.common.config import load_config
    from coldstart.common.tiny_model import build_tiny_model

    load_before = os.getloadavg()
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [])
    with tempfile.TemporaryDirectory(prefix="eval-memory-") as work_dir:
        work = Path(work_dir)
        model = build_tiny_model(
            work / "model", cfg.model.tiny, cfg.data.min_pixels, cfg.data.max_pixels
        )
        runs = []
        for rows in sorted(args.rows):
            started = time.perf_counter()
            runs.append(measure(rows, model, work))
            print(f"{rows} rows: {runs[-1]} ({time.perf_counter() - started:.0f} s)", flush=True)
    report = {"bench": "eval_memory", "runs": runs, "machine": machine_facts(load_before)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.output.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
