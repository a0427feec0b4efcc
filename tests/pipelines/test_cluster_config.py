"""The cluster section lives apart from the training config, and sizes each stage's volumes.

Pod sizes, images and volumes are `cluster:` in the YAML (pipelines/cluster_config.py): the JSON
the stages receive, the config digest and the MLflow params hold hyperparameters only, so a
changed GPU count or image tag does not change what a stage trains, hashes or logs.
"""

from pathlib import Path

import pytest

from coldstart.common.config import ConfigError, config_from_dict, load_config
from coldstart.pipelines.cluster_config import cluster_config
from coldstart.pipelines.pipeline import build_pipeline
from tests.pipelines.test_cluster_resources import compile_docs, container

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"sft": {"resources": {"cpu": "8"}}}, "sft.resources"),
        ({"eval": {"resources": {}}}, "eval.resources"),
        ({"data_prep_resources": {"cpu": "8"}}, "data_prep_resources"),
    ],
)
def test_a_config_from_before_the_split_gets_a_migration_error(old, new):
    with pytest.raises(ConfigError, match=rf"{new}.*cluster\.resources\.<data_prep\|sft"):
        config_from_dict(old)


def test_stages_get_the_training_config_only():
    cfg = load_config(CONFIGS / "qwen2.5-vl-7b.yaml")
    other = load_config(
        CONFIGS / "qwen2.5-vl-7b.yaml",
        ["cluster.resources.sft.accelerator_count=4", "cluster.image_tag=v2"],
    )
    assert cluster_config(cfg).resources.sft.accelerator_count == 8
    assert cluster_config(other).resources.sft.accelerator_count == 4
    assert "accelerator_count" not in cfg.to_json() and "cluster" not in cfg.to_json()
    assert cfg.to_json() == other.to_json() and cfg.digest() == other.digest()


def test_a_bad_cluster_field_is_named_when_the_dag_is_built():
    cfg = load_config(CONFIGS / "tiny.yaml", ["cluster.resources.sft.scratch_size=lots"])
    with pytest.raises(ConfigError, match=r"cluster\.resources\.sft\.scratch_size"):
        build_pipeline(cfg)


def _volumes(k8s, executor):
    ex = k8s[executor]
    return {v["volumeName"]: v for v in ex.get("genericEphemeralVolume", [])}


def test_paper_gpu_stages_get_scratch_and_staging_volumes_off_the_node_disk(tmp_path):
    """7B: GRPO checkpoints (~100 GB with optimizer state) and the launcher's staged models go to
    per-pod ephemeral volumes sized in the config, and COLDSTART_SCRATCH points at /scratch."""
    cfg = load_config(CONFIGS / "qwen2.5-vl-7b.yaml")
    spec, k8s = compile_docs(build_pipeline(cfg), tmp_path)
    sizes = cluster_config(cfg).resources
    for stage in ("sft", "grpo", "eval"):
        ex = f"exec-{stage}-op"
        vols = _volumes(k8s, ex)
        res = getattr(sizes, stage)
        assert vols["scratch"]["mountPath"] == "/scratch", stage
        assert vols["scratch"]["size"] == res.scratch_size
        assert vols["staging"]["mountPath"] == "/s3" and vols["staging"]["size"] == res.staging_size
        assert vols["scratch"]["accessModes"] == ["ReadWriteOnce"]
        assert vols["scratch"].get("defaultStorageClass") is True  # no storage_class set
        env = {e["name"]: e["value"] for e in container(spec, ex)["env"]}
        assert env["COLDSTART_SCRATCH"] == env["TMPDIR"] == "/scratch", stage
    assert not _volumes(k8s, "exec-data-prep-op")  # not sized: no volume


def test_volume_kind_storage_class_and_pipeline_root_scheme(tmp_path):
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            "cluster.resources.eval.scratch_size=20Gi",
            "cluster.resources.eval.staging_size=30Gi",
            "cluster.storage_class=fast-nvme",
            "cluster.pipeline_root=minio://bucket/root",
        ],
    )
    _, k8s = compile_docs(build_pipeline(cfg), tmp_path)
    vols = _volumes(k8s, "exec-eval-op")
    assert vols["staging"]["mountPath"] == "/minio"
    assert vols["scratch"]["storageClassName"] == "fast-nvme"
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        ["cluster.resources.eval.scratch_size=20Gi", "cluster.volume_kind=empty_dir"],
    )
    _, k8s = compile_docs(build_pipeline(cfg), tmp_path)
    mounts = {m["mountPath"]: m for m in k8s["exec-eval-op"]["emptyDirMounts"]}
    assert mounts["/scratch"]["sizeLimit"] == "20Gi" and not _volumes(k8s, "exec-eval-op")
