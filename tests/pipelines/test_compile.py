"""The compiled pipeline: what a cluster would receive, checked without a cluster."""

from pathlib import Path

import yaml

from coldstart.common.config import load_config
from coldstart.common.images import stage_image
from coldstart.pipelines.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def compile_docs(tmp_path, config="tiny.yaml", *overrides):
    out = tmp_path / "p.yaml"
    args = ["compile", "--config", str(CONFIGS / config), "--output", str(out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def executors(spec):
    return spec["deploymentSpec"]["executors"]


def test_compiles_with_config_parameter_and_stage_images(tmp_path):
    spec, _platform = compile_docs(tmp_path)
    cfg = load_config(CONFIGS / "tiny.yaml")
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert load_config(None).model_validate_json(default) == cfg
    images = {name: ex["container"]["image"] for name, ex in executors(spec).items()}
    assert images["exec-data-prep-op"] == stage_image("data_prep")
    assert images["exec-base-model-op"] == stage_image("base_model")
    tasks = spec["root"]["dag"]["tasks"]
    assert {"data-prep-op", "base-model-op", "sft-op", "grpo-op"} <= set(tasks)
    assert (
        tasks["grpo-op"]["inputs"]["artifacts"]["init_model"]["taskOutputArtifact"]["producerTask"]
        == "sft-op"
    )
    assert images["exec-sft-op"] == stage_image("sft") and images["exec-grpo-op"] == stage_image(
        "grpo"
    )


def test_ablation_branch_is_a_condition_on_the_parameter(tmp_path):
    spec, _ = compile_docs(tmp_path)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["ablation"]["defaultValue"] is False
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = [t["triggerPolicy"]["condition"] for t in branches.values()]
    assert len(conditions) == 2 and all("ablation" in c for c in conditions)
    branch = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert branch["grpo-op-2"]["inputs"]["artifacts"]["init_model"]["componentInputArtifact"]
    assert "rl_model" in branch["eval-op"]["inputs"]["artifacts"]


def test_components_do_not_pip_install_at_run_time(tmp_path):
    spec, _ = compile_docs(tmp_path)
    for name, ex in executors(spec).items():
        command = " ".join(ex["container"].get("command", []))
        assert "pip install" not in command, name


def test_every_task_mounts_memory_backed_shm(tmp_path):
    _, platform = compile_docs(tmp_path)
    for name, ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        (mount,) = ex["emptyDirMounts"]
        assert mount["mountPath"] == "/dev/shm" and mount["medium"] == "Memory", name


def test_image_override_per_stage(tmp_path):
    spec, _ = compile_docs(
        tmp_path, "tiny.yaml", "cluster.resources.data_prep.image=registry.local/dp:1"
    )
    assert executors(spec)["exec-data-prep-op"]["container"]["image"] == "registry.local/dp:1"


def _dag_tasks(spec):
    """Every task of the pipeline with its component's DAG (root and condition branches)."""
    yield from spec["root"]["dag"]["tasks"].items()
    for component in spec["components"].values():
        yield from component.get("dag", {}).get("tasks", {}).items()


def test_every_stage_reading_a_dataset_gets_data_preps_image_store(tmp_path):
    """sft, both GRPO runs and eval take data_prep's `images` output beside their dataset (inside
    the ablation's branches it arrives as the branch's input, wired from the same output)."""
    spec, _ = compile_docs(tmp_path)
    readers = {}
    for name, task in _dag_tasks(spec):
        artifacts = task.get("inputs", {}).get("artifacts", {})
        if any(k in artifacts for k in ("sft_data", "rl_data", "eval_data")):
            readers[name] = artifacts
    assert {"sft-op", "grpo-op", "grpo-op-2", "eval-op"} <= set(readers)
    from_data_prep = {"outputArtifactKey": "images", "producerTask": "data-prep-op"}
    for name, artifacts in readers.items():
        store = artifacts["images"]  # in a branch: kfp's channel named after the producer
        assert (
            store.get("taskOutputArtifact") == from_data_prep
            or store.get("componentInputArtifact") == "pipelinechannel--data-prep-op-images"
        ), (name, store)
