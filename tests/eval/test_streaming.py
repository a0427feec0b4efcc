"""Eval streams: a crashed eval resumes without re-generating, memory stays flat in the rows,
and the reflection ("aha moment") tally reaches the report and the metrics."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from coldstart.eval import stage
from coldstart.eval.cli import eval_paths, local_cache, main
from tests.conftest import tiny_config
from tests.eval.fixtures import URIS

pytestmark = pytest.mark.timeout(900)


def eval_config(tmp_path, **eval_section):
    section = {
        "max_new_tokens": 6,
        "batch_size": 1,  # chunks of 8 samples
        "benchmarks": [{"name": "mathvista", "uri": str(URIS["mathvista"])}],
    }
    section.update(eval_section)
    return tiny_config(tmp_path, eval=section)


def progress_log(cfg, model_dir: Path, run_id: str) -> Path:
    """Where eval keeps the responses of `model_dir` (as "base") on the config's one benchmark."""
    model = stage.model_identity(str(model_dir), cfg, local_cache(cfg))
    (spec,) = cfg.eval.benchmarks
    key = stage.progress_key(cfg, model, stage.benchmark_identity(spec, None))
    return eval_paths(cfg, run_id).progress("base", spec.name, key).path


def test_a_crashed_eval_resumes_without_regenerating(tmp_path, tiny_model_dir, monkeypatch):
    cfg = eval_config(tmp_path)
    first = main(cfg, {"base": str(tiny_model_dir)}, None, tmp_path / "out1", "run-a")
    assert first["eval/base/mathvista/generated"] == 8
    log = progress_log(cfg, tiny_model_dir, "run-a")
    assert log.parent == Path(cfg.output_dir).resolve() / "run-a" / "eval" / "progress" / "base"
    lines = log.read_text().splitlines()
    assert len(lines) == 8
    # a crash after 3 responses, in the middle of writing the 4th; the first one marked
    marked = {**json.loads(lines[0]), "response": r"\boxed{MARK}"}
    log.write_text(json.dumps(marked) + "\n" + "\n".join(lines[1:3]) + "\n" + lines[3][:20])

    again = main(cfg, {"base": str(tiny_model_dir)}, None, tmp_path / "out2", "run-a")
    assert again["eval/base/mathvista/generated"] == 5  # only what was missing
    predictions = pd.read_parquet(tmp_path / "out2" / "predictions" / "predictions.parquet")
    before = pd.read_parquet(tmp_path / "out1" / "predictions" / "predictions.parquet")
    assert list(predictions["id"]) == list(before["id"])  # file order, nothing twice
    assert predictions["response"].iloc[0] == r"\boxed{MARK}"  # read back, not generated again
    assert list(predictions["response"].iloc[1:]) == list(before["response"].iloc[1:])  # greedy
    assert len(log.read_text().splitlines()) == 8

    # everything generated: a rerun scores from the log and never loads the model
    monkeypatch.setattr(stage, "make_eval_backend", _refuse_to_load)
    done = main(cfg, {"base": str(tiny_model_dir)}, None, tmp_path / "out3", "run-a")
    assert done["eval/base/mathvista/generated"] == 0


def _refuse_to_load(*args, **kwargs):
    raise AssertionError("the model was loaded: the responses should come from the log")


REFLECTION_RESPONSES = {  # MathVista fixture: golds square (B), 5 (C), 7, 2.5, 0.67, 12, [2, 5], 40
    "1": r"Wait, let me re-check. \boxed{B}",  # reflective, right
    "2": r"Hmm... \boxed{C}",  # reflective, right
    "3": r"Wait: \boxed{8}",  # reflective, wrong
    "4": r"\boxed{2.5}",  # right
    "5": r"\boxed{0.1}",
    "6": r"\boxed{13}",
    "7": r"\boxed{[1, 1]}",
    "8": "The weight is 41",  # "weight" is not "wait"
}


def test_reflection_tally_in_report_and_metrics(tmp_path, tiny_model_dir, monkeypatch):
    """Responses given through the progress log (no model runs): known shares and accuracies."""
    cfg = eval_config(tmp_path)
    log = progress_log(cfg, tiny_model_dir, "run-r")
    records = [
        {"id": i, "response": r, "finish_reason": "stop", "error": None, "num_tokens": 9}
        for i, r in REFLECTION_RESPONSES.items()
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(stage, "make_eval_backend", _refuse_to_load)
    metrics = main(cfg, {"base": str(tiny_model_dir)}, None, tmp_path / "out", "run-r")

    assert metrics["eval/base/reflection/share"] == pytest.approx(3 / 8)
    assert metrics["eval/base/reflection/accuracy_with"] == pytest.approx(2 / 3)
    assert metrics["eval/base/reflection/accuracy_without"] == pytest.approx(1 / 5)
    assert metrics["eval/base/mathvista/official/accuracy"] == pytest.approx(3 / 8)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| base | 8 | 37.5 | 66.7 | 20.0 |" in report
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(summary["tables"]) == {"official", "strict"}
    predictions = pd.read_parquet(tmp_path / "out" / "predictions" / "predictions.parquet")
    assert list(predictions["reflection"]) == [True] * 3 + [False] * 5
    assert {"correct_official", "correct_strict", "extracted_strict"} <= set(predictions.columns)


# --------------------------------------------------------------------------- memory

IMAGE_PADDING = 200_000  # bytes of PNG text chunk per row: heavy rows, quick to decode


def _heavy_png(index: int) -> bytes:
    info = PngImagePlugin.PngInfo()
    # Random (hex) text: parquet cannot squeeze it, so the file is as heavy as its rows. With a
    # repeated pattern the file was tiny and pyarrow's read-ahead of the whole file went unseen.
    info.add_text("padding", random.Random(index).randbytes(IMAGE_PADDING // 2).hex())
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (index % 255, 0, 0)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_benchmark(path: Path, rows: int) -> Path:
    """A MathVision-layout parquet of `rows` rows, each carrying ~300 KB of image bytes."""
    writer = None
    for start in range(0, rows, 50):
        batch = {
            "id": [str(i) for i in range(start, min(rows, start + 50))],
        }
        n = len(batch["id"])
        batch.update(
            {
                "question": ["How many?"] * n,
                "options": [[] for _ in range(n)],
                "answer": ["1"] * n,
                "decoded_image": [{"bytes": _heavy_png(int(i)), "path": None} for i in batch["id"]],
            }
        )
        table = pa.table(batch)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


PROBE = """
import json, resource, sys
from pathlib import Path
from coldstart.eval.stage import EvalPaths, run_eval
from tests.conftest import tiny_config
tmp, bench, model = map(Path, sys.argv[1:4])
cfg = tiny_config(tmp, eval={"max_new_tokens": 1, "batch_size": 16, "scoring": ["strict"],
    "benchmarks": [{"name": "mathvision", "uri": str(bench)}]})
run = run_eval(cfg, {"base": str(model)}, None, tmp / "cache", EvalPaths(tmp / "work"), tmp / "pred")
print(json.dumps({"n": run.results["base"]["strict"]["mathvision"]["n"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(tmp: Path, rows: int, model: Path) -> dict:
    tmp.mkdir()
    bench = write_benchmark(tmp / "bench.parquet", rows)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp), str(bench), str(model)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_does_not_grow_with_the_rows(tmp_path, tiny_model_dir):
    small = peak_rss(tmp_path / "small", 100, tiny_model_dir)
    large = peak_rss(tmp_path / "large", 1000, tiny_model_dir)
    assert (small["n"], large["n"]) == (100, 1000)
    held = 900 * IMAGE_PADDING / 2**20  # ~172 MB more if the 900 extra rows were held
    assert large["peak_mb"] - small["peak_mb"] < held / 3, (small, large)
