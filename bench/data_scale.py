"""data_prep at real size: N rows of 1000x1000 JPEG at the paper's pixel bounds.

    .venv/bin/python bench/data_scale.py                        # N=1,000 and the issue's 300-row case
    .venv/bin/python bench/data_scale.py --rows 1000 10000      # add N=10,000 (minutes)
    .venv/bin/python bench/data_scale.py --rows 300 --no-s3 --num-proc 2

Inputs are the synthetic generator's scenes drawn at 1000x1000, each row made unique (its
number drawn into the image and the question) so dedup keeps every row, written as JPEG into
one parquet of 100-row row groups; the same file is also uploaded to a moto S3 server and read
from `s3://`. Each run is `run_data_prep` in a child process (no MLflow), with the RL set
(`data.rl_files`) only, min/max pixels 262,144 / 1,204,224. Reported per run: rows/s over the
stage's own wall time, rows per CPU-second of the whole process tree (what a row costs,
whatever else the machine runs), the peak of the summed RSS of the child and its workers
(sampled every 0.1 s, shared pages counted once per process: an upper bound), and output
bytes / input bytes.

The issue's case gives the same 300-row parquet as `sft_files` and `rl_files`: both datasets
point into one image store (images/), so each image is written once. Output bytes count the
three datasets and the store. The limit is the work a worker cannot avoid per row:
decode one 1-MP JPEG to RGB, hash its pixels, write its bytes; measured in this process on one
core, times the cores.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine_facts  # noqa: E402

PAPER_PIXELS = {"min_pixels": 262144, "max_pixels": 1204224}
SIDE = 1000
GOALS = {"rows_per_s": 40.0, "peak_rss_mb_10k": 2048.0, "output_over_input": 1.5}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1000], help="N values")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-s3", action="store_true", help="local inputs only")
    parser.add_argument("--no-issue-case", action="store_true", help="skip the 300-row sft+rl run")
    parser.add_argument("--workdir", default=None, help="keep inputs and outputs here")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "data_scale.json"))
    parser.add_argument(
        "--limit-only",
        action="store_true",
        help="measure the limit again and rewrite the report of the runs in --output",
    )
    parser.add_argument("--child", nargs=2, metavar=("CONFIG_JSON", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- inputs


def base_scenes(count: int = 32) -> list[Any]:
    from coldstart.data_prep.synthetic import FAMILIES, generate

    per_family = count // len(FAMILIES) + 1
    scenes = [s for f in FAMILIES for s in generate(f, per_family, [1, 2, 3], SIDE, seed=7)]
    return scenes[:count]


@functools.cache
def texture() -> np.ndarray:
    """Fixed sensor-like noise: flat synthetic drawings make ~25 KB JPEGs that parquet's
    compression still halves; with it a JPEG is ~70 KB (the issue's inputs: 65 KB a row) and
    incompressible, as photos and scans are."""
    return np.random.default_rng(0).normal(0, 6, (SIDE, SIDE, 3)).astype(np.int16)


def unique_jpeg(scene: Any, index: int) -> bytes:
    """The scene with the row number drawn in, as a JPEG (PIL's default quality 75)."""
    pixels = np.asarray(scene.image, dtype=np.int16) + texture()
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(image).text((8, SIDE - 24), f"#{index}", fill=(0, 0, 0))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return buf.getvalue()


def write_inputs(path: Path, rows: int, scenes: list[Any]) -> int:
    """A parquet of `rows` rows written 100 at a time (memory flat here too); returns its bytes."""
    schema = pa.schema(
        [("q", pa.string()), ("a", pa.string()), ("s", pa.string()), ("img", pa.binary())]
    )
    with pq.ParquetWriter(str(path), schema) as writer:
        for start in range(0, rows, 100):
            batch: dict[str, list[Any]] = {"q": [], "a": [], "s": [], "img": []}
            for i in range(start, min(rows, start + 100)):
                scene = scenes[i % len(scenes)]
                batch["q"].append(f"{scene.problem} (item {i})")
                batch["a"].append(scene.answer)
                batch["s"].append(f"Reasoning. \\boxed{{{scene.answer}}}")
                batch["img"].append(unique_jpeg(scene, i))
            writer.write_table(pa.table(batch, schema=schema))
    return path.stat().st_size


# --------------------------------------------------------------------------- runs


def config_for(uri: str, num_proc: int, output_dir: Path, as_sft: bool) -> dict[str, Any]:
    source = {"uri": uri, "columns": {"problem": "q", "answer": "a", "images": "img"}}
    data: dict[str, Any] = {
        "source": "files",
        "rl_files": [source],
        "num_proc": num_proc,
        **PAPER_PIXELS,
    }
    if as_sft:
        data["sft_files"] = [dict(source, columns=dict(source["columns"], solution="s"))]
    return {
        "output_dir": str(output_dir),
        "data": data,
        "sft": {"enabled": as_sft},
    }


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class TreeSampler:
    """Polls a process and its descendants: the peak of their summed RSS and their CPU seconds.

    CPU seconds (the last value seen per process) say what a row costs whatever else runs on
    the machine; wall-clock rates on a shared machine do not.
    """

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_rss_mb = 0.0
        self.cpu_s: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = 0.0
            for proc in procs:
                try:
                    rss += proc.memory_info().rss / 2**20
                    self.cpu_s[proc.pid] = sum(proc.cpu_times()[:2])
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    continue
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            self._stop.wait(self.interval_s)


def run_child(cfg: dict[str, Any], out: Path, env: dict[str, str]) -> dict[str, Any]:
    """data_prep in a child process, its process tree sampled; returns the run's numbers."""
    cmd = [sys.executable, __file__, "--child", json.dumps(cfg), str(out)]
    load = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        with TreeSampler(proc.pid) as sampler:
            stdout, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"data_prep child failed ({proc.returncode}): {cmd}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(sampler.peak_rss_mb, 1)
    result["cpu_s"] = round(sum(sampler.cpu_s.values()), 1)
    result["load_avg_1m"] = [round(load, 1), round(os.getloadavg()[0], 1)]
    result["output_bytes"] = sum(
        folder_bytes(out / name) for name in ("sft", "rl", "eval", "images")
    )
    return result


def child(config_json: str, out: str) -> None:
    """What `run_data_prep` does, with its two phases timed: prepare (read, decode, validate,
    write parts; parallel) and merge (dedup, write the datasets; one process)."""
    from coldstart.common.config import config_from_dict
    from coldstart.data_prep.shard import prepare_shard
    from coldstart.data_prep.stage import DataPrepOutputs, merge_shards

    cfg = config_from_dict(json.loads(config_json))
    root = Path(out)
    start = time.perf_counter()
    prepare_shard(cfg.data, 0, 1, root / "shard", root / "cache")
    prepared = time.perf_counter()
    metrics = merge_shards(cfg, [root / "shard"], DataPrepOutputs.under(root), root)
    end = time.perf_counter()
    shutil.rmtree(root / "shard")
    print(
        json.dumps(
            {
                "seconds": round(end - start, 2),
                "prepare_s": round(prepared - start, 2),
                "merge_s": round(end - prepared, 2),
                "metrics": metrics,
            }
        )
    )


def per_row_limit(jpegs: list[bytes], workdir: Path) -> dict[str, float]:
    """CPU seconds of the work no worker can skip for one row: decode to RGB, hash, write."""
    start = time.process_time()
    with (workdir / "limit.bin").open("wb") as sink:
        for data in jpegs:
            with Image.open(io.BytesIO(data)) as image:
                rgb = image.convert("RGB")
            hashlib.sha1(rgb.tobytes()).hexdigest()
            sink.write(data)
    per_row = (time.process_time() - start) / len(jpegs)
    return {"cpu_s_per_row": round(per_row, 4), "rows_per_cpu_s": round(1 / per_row, 1)}


# --------------------------------------------------------------------------- report


def s3_moto(workdir: Path) -> tuple[Any, dict[str, str]]:
    from tests.servers import TEST_CREDENTIALS, _boto_client, _moto_process, free_port

    port = free_port()
    server = _moto_process(port, workdir)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    _boto_client("s3", endpoint).create_bucket(Bucket="bench")
    env = {
        **TEST_CREDENTIALS,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "COLDSTART_S3_ENDPOINT_URL": endpoint,
    }
    return server, env


def _load_remark(result: dict[str, Any]) -> str:
    """Say that rates are lower bounds only when other work shared the CPUs (1-min load above them)."""
    cpus = result["machine"]["cpus"]
    loads = [load for run in result["runs"] for load in run["load_avg_1m"]]
    if max(loads, default=0.0) > cpus:
        return " (the machine was shared with other jobs: rates are lower bounds)"
    return ""


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# data_prep at real size (bench/data_scale.py)",
        "",
        f"1000x1000 JPEG rows, pixel bounds {PAPER_PIXELS['min_pixels']:,} / "
        f"{PAPER_PIXELS['max_pixels']:,}; {result['machine']['cpus']} CPUs, load average "
        f"{result['machine']['load_avg_before']} before and {result['machine']['load_avg_after']} "
        f"after{_load_remark(result)}.",
        "",
        "| case | rows | source | num_proc | wall s (prepare + merge) | rows/s | rows per CPU-s "
        "| load 1m | peak RSS MB | output / input |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['case']} | {run['rows']:,} | {run['source']} | {run['num_proc']} | "
            f"{run['seconds']} ({run.get('prepare_s')} + {run.get('merge_s')}) | "
            f"{run['rows_per_s']} | {run['rows_per_cpu_s']} | "
            f"{run['load_avg_1m'][0]}-{run['load_avg_1m'][1]} | {run['peak_rss_mb']} | "
            f"{run['output_over_input']} ({run['output_bytes'] / 1e6:.1f} / "
            f"{run['input_bytes'] / 1e6:.1f} MB) |"
        )
    limit = result["limit"]
    best = max(run["rows_per_cpu_s"] for run in result["runs"])
    lines += [
        "",
        f"Limit (decode + hash + write of one 1-MP JPEG, in CPU time): {limit['cpu_s_per_row']} "
        f"CPU-s per row = {limit['rows_per_cpu_s']} rows per CPU-second, i.e. "
        f"{2 * limit['rows_per_cpu_s']:.0f} rows/s on 2 idle cores. data_prep's best run: "
        f"{best} rows per CPU-second ({best / limit['rows_per_cpu_s']:.0%} of the limit).",
        "The issue's case (the file as SFT and RL set) writes each image once: both datasets "
        "hold keys into one image store.",
        "",
        f"Goals: >= {GOALS['rows_per_s']} rows/s on 2 cores, peak RSS flat in N and < 2 GB at "
        f"10,000 rows, output <= {GOALS['output_over_input']}x input.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    load_before = os.getloadavg()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="data_scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    output = Path(args.output)
    if args.limit_only:
        result = json.loads(output.read_text())
        scenes = base_scenes()
        jpegs = [unique_jpeg(scenes[i % len(scenes)], i) for i in range(40)]
        result["limit"] = per_row_limit(jpegs, workdir)
        result["limit"]["load_avg_1m"] = round(os.getloadavg()[0], 1)
        return write_report(result, output)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    scenes = base_scenes()
    cases = [("rl", n, False) for n in args.rows]
    if not args.no_issue_case:
        cases.append(("issue: 300 rows as sft+rl", 300, True))
    server, s3_env = (None, {}) if args.no_s3 else s3_moto(workdir)
    runs: list[dict[str, Any]] = []
    try:
        for case, rows, as_sft in cases:
            parquet = workdir / f"in-{rows}.parquet"
            input_bytes = (
                write_inputs(parquet, rows, scenes)
                if not parquet.exists()
                else parquet.stat().st_size
            )
            sources = [("local", str(parquet))]
            if server is not None and not as_sft:
                from tests.servers import _boto_client

                _boto_client("s3", s3_env["AWS_ENDPOINT_URL_S3"]).upload_file(
                    str(parquet), "bench", parquet.name
                )
                sources.append(("s3", f"s3://bench/{parquet.name}"))
            for source, uri in sources:
                for num_proc in args.num_proc if not as_sft else [max(args.num_proc)]:
                    out = workdir / f"out-{case[:5]}-{rows}-{source}-{num_proc}"
                    shutil.rmtree(out, ignore_errors=True)
                    cfg = config_for(uri, num_proc, out, as_sft)
                    run = run_child(cfg, out, {**env, **s3_env})
                    run.update(
                        case=case,
                        rows=rows,
                        source=source,
                        num_proc=num_proc,
                        input_bytes=input_bytes,
                        rows_per_s=round(rows * (2 if as_sft else 1) / run["seconds"], 1),
                        rows_per_cpu_s=round(rows * (2 if as_sft else 1) / run["cpu_s"], 1),
                        output_over_input=round(run["output_bytes"] / input_bytes, 2),
                    )
                    print(json.dumps({k: v for k, v in run.items() if k != "metrics"}), flush=True)
                    runs.append(run)
        jpegs = [unique_jpeg(scenes[i % len(scenes)], i) for i in range(40)]
        limit = per_row_limit(jpegs, workdir)
    finally:
        if server is not None:
            server.stop()
    result = {"runs": runs, "limit": limit, "goals": GOALS, "machine": machine_facts(load_before)}
    return write_report(result, output)


def write_report(result: dict[str, Any], output: Path) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
