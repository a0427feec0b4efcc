"""Streaming data_prep writes what the in-memory version wrote, for any number of workers."""

import json

import datasets
import pytest

from coldstart.common.image_store import ImageStore
from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep
from tests.conftest import tiny_config
from tests.data_prep.reference_inputs import REFERENCE, build_inputs, digest_outputs


def run(cfg, root):
    """The metrics the in-memory version had, and the outputs' digest; the count of images in
    the store (new with it) is checked against the rows' distinct images."""
    out = DataPrepOutputs.under(root)
    metrics = run_data_prep(cfg, out, root / "cache")
    keys = {
        key
        for name in ("sft", "rl", "eval")
        for split in split_values(datasets.load_from_disk(str(root / name)))
        for row in split["images"]
        for key in row
    }
    assert metrics.pop("data/images_stored") == len(keys) == len(ImageStore(out.images))
    return metrics, digest_outputs(root)


def split_values(loaded):
    return loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_files_source_equals_in_memory_reference(tmp_path, num_proc):
    """Every image case (up/down/inside the bounds, RGBA, palette, JPEG kept, two images),
    repeats, an eval leak and skipped rows: rows, order, ids, pixels and metrics as before."""
    expected = json.loads(REFERENCE.read_text())["files"]
    cfg = build_inputs(tmp_path / "in")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_proc": num_proc})})
    metrics, outputs = run(cfg, tmp_path / "out")
    assert outputs == expected["outputs"]
    assert metrics == expected["metrics"]


def test_synthetic_source_equals_in_memory_reference(tmp_path):
    expected = json.loads(REFERENCE.read_text())["synthetic"]
    metrics, outputs = run(tiny_config(tmp_path), tmp_path / "out")
    assert outputs == expected["outputs"] and metrics == expected["metrics"]


def test_image_inside_bounds_keeps_its_bytes_and_a_resized_jpeg_stays_jpeg(tmp_path):
    from PIL import Image

    from tests.data_prep.reference_inputs import encoded, gradient

    inside = encoded(gradient((80, 60), 1), "JPEG")
    large = encoded(gradient((400, 300), 2), "JPEG")
    rows = [{"q": "a?", "a": "1", "img": inside}, {"q": "b?", "a": "2", "img": large}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rl.parquet"))
    cfg = tiny_config(
        tmp_path,
        data={
            "source": "files",
            "rl_files": [
                {
                    "uri": str(tmp_path / "rl.parquet"),
                    "columns": {"problem": "q", "answer": "a", "images": "img"},
                }
            ],
            "min_pixels": 3136,
            "max_pixels": 12544,
        },
        sft={"enabled": False},
    )
    run(cfg, tmp_path / "out")
    store = ImageStore(tmp_path / "out" / "images")
    table = datasets.load_from_disk(str(tmp_path / "out" / "rl"))
    kept, resized = (store.encoded(row["images"][0])["bytes"] for row in table)
    assert kept == inside
    with Image.open(__import__("io").BytesIO(resized)) as image:
        assert image.format == "JPEG" and image.size[0] * image.size[1] <= 12544
