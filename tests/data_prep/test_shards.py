"""Sharded data_prep: shards cover every file once, the merge writes what one pod writes, a bad
row is named by its file and row, and the kfp sub-DAG (ParallelFor + merge) compiles and runs."""

import json

import datasets
import pytest
import yaml
from kfp import compiler, dsl

from coldstart.common.errors import InputError
from coldstart.data_prep.shard import prepare_shard
from coldstart.data_prep.stage import DataPrepOutputs, merge_shards, run_data_prep
from coldstart.pipelines.data_shards import sharded_data_prep
from tests.conftest import tiny_config
from tests.data_prep.reference_inputs import digest_outputs, encoded, gradient

COLS = {"problem": "q", "answer": "a", "images": "img"}


def folder_config(tmp_path, n_files=4, bad=None, shards=3):
    """RL rows in `n_files` parquet files of one folder (repeats across files), SFT in another."""
    for name in ("rl", "sft"):
        (tmp_path / name).mkdir()
        for f in range(n_files):
            rows = [
                {
                    "q": f"{name} {(f * 3 + i) % 7}?",
                    "a": str(i),
                    "s": f"so \\boxed{{{i}}}",
                    "img": encoded(gradient((90, 70), (f * 3 + i) % 7), "PNG"),
                }
                for i in range(3)
            ]
            if bad == (name, f):
                rows[1]["img"] = b"not an image"
            datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / name / f"part-{f}.parquet"))
    return tiny_config(
        tmp_path,
        data={
            "source": "files",
            "rl_files": [{"uri": str(tmp_path / "rl"), "columns": COLS}],
            "sft_files": [{"uri": str(tmp_path / "sft"), "columns": dict(COLS, solution="s")}],
            "min_pixels": 3136,
            "max_pixels": 12544,
            "sft_holdout_fraction": 0.2,
            "shards": shards,
            "num_proc": 1,
        },
    )


def outputs(root):
    return DataPrepOutputs.under(root)


def test_sharded_merge_equals_one_pod(tmp_path):
    cfg = folder_config(tmp_path)
    one = run_data_prep(cfg, outputs(tmp_path / "one"), tmp_path / "cache")
    shard_dirs = [tmp_path / f"shard-{k}" for k in range(3)]
    rows = [
        prepare_shard(cfg.data, k, 3, d, tmp_path / "cache")["rows"]
        for k, d in enumerate(shard_dirs)
    ]
    assert sum(rows) == 24 and all(rows)  # 8 files over 3 shards, every row once
    merged = merge_shards(cfg, shard_dirs, outputs(tmp_path / "many"), tmp_path / "cache")
    assert merged == one and merged["data/duplicates_removed"] > 0
    assert digest_outputs(tmp_path / "many") == digest_outputs(tmp_path / "one")
    ids = datasets.load_from_disk(str(tmp_path / "many" / "rl"))["id"]
    assert ids[:2] == ["part-0.parquet-0", "part-0.parquet-1"]  # a folder's ids name the file


def test_bad_row_in_shard_is_named_by_file_and_row(tmp_path):
    cfg = folder_config(tmp_path, bad=("rl", 2))
    # units in order: sft/part-0..3 (0-3), then rl/part-0..3 (4-7); unit 6 goes to shard 0 of 3
    prepare_shard(cfg.data, 1, 3, tmp_path / "s1", tmp_path / "cache")
    with pytest.raises(InputError) as err:
        prepare_shard(cfg.data, 0, 3, tmp_path / "s0", tmp_path / "cache")
    assert f"{tmp_path / 'rl' / 'part-2.parquet'}: row 1: image bytes cannot be decoded" in str(
        err.value
    )


def test_sharded_dag_compiles_with_parallel_for(tmp_path):
    cfg = folder_config(tmp_path)

    @dsl.pipeline(name="shards")
    def shards(config_json: str = cfg.to_json()):
        sharded_data_prep(cfg, config_json, "")

    compiler.Compiler().compile(shards, str(tmp_path / "p.yaml"))
    spec = (tmp_path / "p.yaml").read_text()
    assert "parameterIterator" in spec and "data-prep-merge-op" in spec
    assert json.dumps(list(range(3))).replace(" ", "") in spec.replace(" ", "").replace("\\", "")


@pytest.mark.slow
def test_sharded_dag_runs_through_kfp_local(tmp_path, monkeypatch):
    from coldstart.pipelines.caching import run_local_pipeline

    monkeypatch.setenv("KFP_RUN_ID", "shards-run")  # what `coldstart run` sets for its stages

    cfg = folder_config(tmp_path, shards=2)
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "out")})

    @dsl.pipeline(name="shards")
    def shards(config_json: str):
        sharded_data_prep(cfg, config_json, "")

    root = tmp_path / "root"
    run_local_pipeline(shards, root, False, config_json=cfg.to_json())
    (merge_dir,) = list(root.glob("*/data-prep-merge-op"))
    one = run_data_prep(cfg, outputs(tmp_path / "one"), tmp_path / "cache")
    assert (
        datasets.load_from_disk(str(merge_dir / "rl_data"))["id"]
        == datasets.load_from_disk(str(tmp_path / "one" / "rl"))["id"]
    )
    assert (
        len(datasets.load_from_disk(str(merge_dir / "sft_data"))["train"]) == one["data/sft_rows"]
    )
    # the merge's image store holds what one pod's holds, in the same order
    stored = [
        datasets.load_from_disk(str(d))["key"]
        for d in (merge_dir / "images", tmp_path / "one" / "images")
    ]
    assert list(stored[0]) == list(stored[1]) and len(stored[0]) == one["data/images_stored"]


def test_full_pipeline_with_shards_feeds_sft_and_its_image_store_from_the_merge(tmp_path):
    from coldstart.pipelines.pipeline import build_pipeline

    cfg = folder_config(tmp_path, shards=2)
    compiler.Compiler().compile(build_pipeline(cfg), str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    assert "data-prep-op" not in tasks and "data-prep-merge-op" in tasks
    sft_input = tasks["sft-op"]["inputs"]["artifacts"]["sft_data"]["taskOutputArtifact"]
    assert sft_input["producerTask"] == "data-prep-merge-op"
    store = tasks["sft-op"]["inputs"]["artifacts"]["images"]["taskOutputArtifact"]
    assert store == {"outputArtifactKey": "images", "producerTask": "data-prep-merge-op"}
