"""The image store: data_prep writes each distinct image once; SFT, GRPO and eval read the keys
their datasets hold back into the images they were given, and say what to do when the store is
missing or belongs to another run."""

import hashlib
import io
import shutil

import datasets
import numpy as np
import pytest
from PIL import Image

from coldstart.common.errors import InputError
from coldstart.common.image_store import ImageStore
from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep
from coldstart.grpo.data import load_rl_dataset
from coldstart.sft.data import SFTDataError, load_sft_splits
from tests.conftest import tiny_config


def noise_jpeg(seed: int, side: int = 96) -> bytes:
    """A JPEG whose bytes dominate a row (noise compresses badly), unique per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def folder_bytes(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def files_config(tmp_path, sft, rl, **data):
    columns = {"problem": "q", "answer": "a", "images": "img"}
    sft_columns = dict(columns, solution="s")
    return tiny_config(
        tmp_path,
        data={
            "source": "files",
            "sft_files": [{"uri": str(sft), "columns": sft_columns}] if sft else [],
            "rl_files": [{"uri": str(rl), "columns": columns}],
            "min_pixels": 1024,
            "max_pixels": 96 * 96,  # inside the bounds: every JPEG keeps its bytes
            "sft_holdout_fraction": 0.2,
            **data,
        },
        sft={"enabled": bool(sft)},
    )


def write_rows(path, images, problems=None):
    problems = problems or [f"What is shown in picture {i}?" for i in range(len(images))]
    rows = [
        {"q": q, "a": str(i), "s": f"Look. \\boxed{{{i}}}", "img": img}
        for i, (q, img) in enumerate(zip(problems, images, strict=True))
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def test_one_file_as_sft_and_rl_set_writes_each_image_once(tmp_path):
    """The issue's case in small: the same parquet as SFT and RL set. Both datasets (SFT train and
    validation, RL) hold keys into one store, which holds every input JPEG byte for byte."""
    jpegs = [noise_jpeg(i) for i in range(30)]
    source = write_rows(tmp_path / "both.parquet", jpegs)
    out = DataPrepOutputs.under(tmp_path / "out")
    metrics = run_data_prep(files_config(tmp_path, source, source), out, tmp_path / "cache")

    assert metrics["data/sft_rows"] + metrics["data/sft_holdout_rows"] == metrics["data/rl_rows"]
    assert metrics["data/images_stored"] == 30
    stored = datasets.load_from_disk(str(out.images))
    assert sorted(stored["key"]) == sorted(hashlib.sha256(j).hexdigest() for j in jpegs)
    written = sum(folder_bytes(p) for p in (out.sft, out.rl, out.eval, out.images))
    images = sum(map(len, jpegs))
    assert written < 1.5 * source.stat().st_size and folder_bytes(out.images) < 1.2 * images
    assert folder_bytes(out.sft) + folder_bytes(out.rl) < 0.25 * images  # keys and text only


def test_rows_that_share_a_picture_share_its_stored_copy(tmp_path):
    """Several questions about one figure (as in the benchmarks): one stored image, and every
    row decodes to its pixels."""
    figure, other = noise_jpeg(1), noise_jpeg(2)
    problems = ["How many sides?", "What is the area?", "Name the color.", "Count the dots."]
    source = write_rows(tmp_path / "rl.parquet", [figure, figure, figure, other], problems)
    out = DataPrepOutputs.under(tmp_path / "out")
    metrics = run_data_prep(files_config(tmp_path, None, source), out, tmp_path / "cache")
    assert metrics["data/rl_rows"] == 4 and metrics["data/images_stored"] == 2

    rl = load_rl_dataset(out.rl, out.images)
    expected = np.asarray(Image.open(io.BytesIO(figure)))
    assert all(np.array_equal(np.asarray(rl[i]["images"][0]), expected) for i in range(3))
    assert rl[[0, 3]]["images"][1][0].size == (96, 96)  # a batch of rows decodes too


def test_a_set_away_from_its_store_needs_the_store_and_gets_it_named(tmp_path, synthetic_data_dir):
    alone = tmp_path / "alone"
    shutil.copytree(synthetic_data_dir / "sft", alone / "sft")
    shutil.copytree(synthetic_data_dir / "rl", alone / "rl")
    with pytest.raises(SFTDataError, match=r"no images/ beside it; give the store \(--images"):
        load_sft_splits(alone / "sft")
    with pytest.raises(InputError, match="its images are keys into data_prep's image store"):
        load_rl_dataset(alone / "rl")
    splits = load_sft_splits(alone / "sft", synthetic_data_dir / "images")
    assert splits.store is not None and splits.train[0]["images"][0].size == (56, 56)


def test_a_store_of_another_run_or_no_store_at_all_is_refused(tmp_path, synthetic_data_dir):
    source = write_rows(tmp_path / "rl.parquet", [noise_jpeg(7)])
    other = DataPrepOutputs.under(tmp_path / "other")
    run_data_prep(files_config(tmp_path, None, source), other, tmp_path / "cache")
    rl = load_rl_dataset(synthetic_data_dir / "rl", other.images)
    with pytest.raises(InputError, match="from different data_prep runs"):
        rl[0]
    with pytest.raises(InputError, match="not an image store"):
        ImageStore(synthetic_data_dir / "rl")
    with pytest.raises(InputError, match="not an image store"):
        ImageStore(tmp_path / "nothing-here")


def test_a_users_set_with_inline_images_needs_no_store(tmp_path):
    """Datasets' usual layout (an `Image` column) trains as before: no store is looked for."""
    rows = [{"images": [{"bytes": noise_jpeg(3), "path": None}], "problem": "p?", "answer": "1"}]
    features = datasets.Features(
        {
            "images": datasets.List(datasets.Image()),
            "problem": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "mine"))
    assert load_rl_dataset(tmp_path / "mine")[0]["images"][0].size == (96, 96)
