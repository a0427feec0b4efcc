"""`coldstart rerun STAGE`: one stage on existing artifacts, imported with dsl.importer; on the
cluster (submitted to the stand-in KFP server) and locally through kfp.local, with its cache.

The local runs use `fake_grpo_op`, a component with grpo_op's signature that copies its input
model and appends a line to an execution log, so a test can tell an execution from a cache hit in
a couple of seconds. (No `from __future__ import annotations`: this module defines a component.)
"""

from pathlib import Path

import pytest
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from coldstart.common.config import config_from_json, load_config
from coldstart.pipelines.cli import main
from coldstart.pipelines.stage_pipeline import STAGES, StageSpec, build_stage_pipeline
from tests.pipelines.test_cluster_resources import compile_docs
from tests.pipelines.test_submit import fake_kfp  # noqa: F401 (a fixture)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fake_grpo_op(
    config_json: str,
    pipeline_run_id: str,
    init_model: Input[Model],
    rl_data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    run_name: str = "grpo",
) -> None:
    from pathlib import Path

    with open(Path(rl_data.path).parent / "executions.log", "a") as log:
        log.write(f"{pipeline_run_id}\n")
    Path(model.path).mkdir(parents=True, exist_ok=True)
    weights = (Path(init_model.path) / "weights.txt").read_text()
    (Path(model.path) / "weights.txt").write_text(weights + "+grpo")
    metrics.log_metric("rows", float(len(list(Path(rl_data.path).iterdir()))))


@pytest.fixture
def fake_grpo(monkeypatch):
    monkeypatch.setitem(STAGES, "grpo", StageSpec(__name__, "fake_grpo_op", STAGES["grpo"].inputs))


@pytest.fixture
def inputs(tmp_path):
    model, data = tmp_path / "inputs" / "sft_model", tmp_path / "inputs" / "rl"
    model.mkdir(parents=True)
    data.mkdir()
    (model / "weights.txt").write_text("sft")
    (data / "part-0.arrow").write_text("rows")
    return model, data


def rerun_local(tmp_path, model, data, *extra):
    args = [
        "rerun",
        "grpo",
        "--local",
        "--init-model",
        str(model),
        "--data",
        str(data),
        "--set",
        f"output_dir={tmp_path / 'out'}",
        *extra,
    ]
    assert main(args) == 0
    return (data.parent / "executions.log").read_text().splitlines()


def test_local_rerun_runs_the_stage_then_reuses_its_cached_outputs(
    tmp_path, fake_grpo, inputs, capsys
):
    model, data = inputs
    assert len(rerun_local(tmp_path, model, data)) == 1
    printed = capsys.readouterr().out
    run_dir = Path(printed.split("run folder: ")[1].splitlines()[0].strip())
    assert (run_dir / "fake-grpo-op" / "model" / "weights.txt").read_text() == "sft+grpo"

    assert len(rerun_local(tmp_path, model, data)) == 1  # unchanged inputs: cache hit, not executed
    log = rerun_local(
        tmp_path, model, data, "--no-cache"
    )  # forced, and grouped under the fresh job id
    assert (
        len(log) == 2 and log[0].startswith("rerun-grpo-") and not log[1].startswith("rerun-grpo-")
    )
    (data / "part-1.arrow").write_text("more rows")  # a changed input directory is a miss
    log = rerun_local(tmp_path, model, data)
    # ... and another run: its state (checkpoints, eval progress) is not the first one's
    assert len(log) == 3 and log[2].startswith("rerun-grpo-") and log[2] != log[0]


def test_a_local_input_changed_in_place_is_a_cache_miss(tmp_path, monkeypatch):
    """kfp.local keys on paths; the salt every local task carries keys on the bytes and the code."""
    from coldstart.pipelines.caching import CACHE_SALT_ENV, local_cache_salt

    rows = tmp_path / "sft.jsonl"
    rows.write_text('{"problem": "1+1", "answer": "2"}\n')
    cfg = load_config(
        CONFIGS / "tiny.yaml", ["data.source=files", f"data.sft_files=[{{uri: {rows}}}]"]
    )
    salt = local_cache_salt(cfg)
    assert local_cache_salt(cfg) == salt
    rows.write_text('{"problem": "1+2", "answer": "3"}\n')
    assert local_cache_salt(cfg) != salt

    monkeypatch.delenv(CACHE_SALT_ENV, raising=False)  # compiled for the cluster: no salt
    spec, _ = compile_docs(build_stage_pipeline(cfg, "sft", {"sft_data": "s3://b/d"}), tmp_path)
    assert CACHE_SALT_ENV not in str(spec)
    monkeypatch.setenv(CACHE_SALT_ENV, salt)  # what a local run sets while it builds the DAG
    spec, _ = compile_docs(build_stage_pipeline(cfg, "sft", {"sft_data": "s3://b/d"}), tmp_path)
    assert CACHE_SALT_ENV in str(spec)


def test_one_stage_pipeline_imports_each_input_and_builds_a_missing_base_model(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["cluster.sft_launcher=trainjob"])
    spec, _ = compile_docs(
        build_stage_pipeline(cfg, "sft", {"sft_data": "s3://b/runs/1/sft_data"}), tmp_path
    )
    executors = spec["deploymentSpec"]["executors"]
    (importer,) = [e["importer"] for e in executors.values() if "importer" in e]
    assert importer["artifactUri"]["constant"] == "s3://b/runs/1/sft_data"
    assert importer["typeSchema"]["schemaTitle"] == "system.Dataset" and not importer.get(
        "reimport"
    )
    tasks = spec["root"]["dag"]["tasks"]
    stage_inputs = tasks["sft-trainjob-op"]["inputs"]["artifacts"]
    assert stage_inputs["sft_data"]["taskOutputArtifact"]["producerTask"].startswith("importer")
    assert stage_inputs["base_model"]["taskOutputArtifact"]["producerTask"] == "base-model-op"


@pytest.mark.parametrize(("stage", "module", "uris"), [
    ("grpo", "coldstart.grpo.component",
     {"init_model": "s3://b/sft/model", "rl_data": "s3://b/rl", "images": "s3://b/images"}),
    ("eval", "coldstart.eval.component",
     {"eval_data": "s3://b/ev", "sft_model": "s3://b/s", "rl_model": "s3://b/r", "sft_rl_model": "s3://b/sr",
      "images": "s3://b/images"}),
    ("sft", "coldstart.sft.component", {"sft_data": "s3://b/sft", "base_model": "s3://b/base"}),
])  # fmt: skip
def test_real_stages_compile_as_one_stage_pipelines(tmp_path, stage, module, uris):
    pytest.importorskip(module, reason=f"{module} not written yet")
    spec, _ = compile_docs(
        build_stage_pipeline(load_config(CONFIGS / "tiny.yaml"), stage, uris), tmp_path
    )
    imported = {
        e["importer"]["artifactUri"]["constant"]
        for e in spec["deploymentSpec"]["executors"].values()
        if "importer" in e
    }
    assert imported == set(uris.values())
    (stage_task,) = [
        t for name, t in spec["root"]["dag"]["tasks"].items() if name.startswith(f"{stage}-op")
    ]
    assert set(uris) <= set(stage_task["inputs"]["artifacts"])


def run_id_of(body: dict) -> str:
    tasks = body["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    return tasks["fake-grpo-op"]["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"][
        "constant"
    ]


def test_cluster_rerun_submits_the_one_stage_pipeline(fake_kfp, fake_grpo, capsys):  # noqa: F811
    args = [
        "rerun",
        "grpo",
        "--host",
        fake_kfp.url,
        "--model",
        "s3://b/sft/model",
        "--data",
        "s3://b/rl",
        "--set",
        "grpo.learning_rate=2e-06",
        "--experiment",
        "reruns",
    ]
    assert main(args) == 0 and main(args) == 0
    body = fake_kfp.bodies("POST", "/runs")[0]
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "coldstart-tiny-rerun-grpo"  # configs/tiny.yaml
    imported = {
        e["importer"]["artifactUri"]["constant"]: e["importer"]["typeSchema"]["schemaTitle"]
        for e in spec["deploymentSpec"]["executors"].values()
        if "importer" in e
    }
    assert imported == {"s3://b/sft/model": "system.Model", "s3://b/rl": "system.Dataset"}
    assert (
        config_from_json(body["runtime_config"]["parameters"]["config_json"]).grpo.learning_rate
        == 2e-06
    )
    assert fake_kfp.experiments[0]["display_name"] == "reruns"
    # a stable MLflow group for unchanged inputs, so the cluster's input fingerprint (and cache) matches
    ids = [run_id_of(body) for body in fake_kfp.bodies("POST", "/runs")]
    assert ids[0] == ids[1] and ids[0].startswith("rerun-grpo-")
    assert main([*args, "--no-cache"]) == 0
    assert run_id_of(fake_kfp.bodies("POST", "/runs")[-1]) == "{{$.pipeline_job_uuid}}"
    assert "/#/runs/details/run-3" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["grpo", "--local", "--data", "d"], "needs ['init_model']"),
    (["eval", "--local", "--model", "s3://b/m", "--data", "d"], "NAME=URI"),
    (["eval", "--local", "--model", "teacher=d", "--data", "d"], "NAME=URI"),
    (["grpo", "--local", "--init-model", "s3://b/m", "--data", "s3://b/d"], "is remote"),
    (["grpo", "--host", "http://127.0.0.1:9", "--init-model", "m", "--data", "s3://b/d"], "object-store URIs"),
    (["grpo", "--init-model", "m", "--data", "d"], "--local"),
    (["data_prep", "--local", "--data", "d"], "takes no dataset"),
    (["data_prep", "--local", "--images", "d"], "takes no image store"),
])  # fmt: skip
def test_bad_rerun_arguments_fail_with_a_clear_message(capsys, monkeypatch, args, message):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(["rerun", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_dataset_of_image_keys_without_its_store_is_refused_before_the_stage(
    tmp_path, synthetic_data_dir, capsys
):
    """data_prep's rl/ copied away from its images/: the command names --images; given the
    store, `input_uris` passes it to the stage as its `images` input."""
    import shutil
    from argparse import Namespace

    from coldstart.pipelines.rerun import input_uris

    alone = shutil.copytree(synthetic_data_dir / "rl", tmp_path / "alone" / "rl")
    model = tmp_path / "model"
    model.mkdir()
    args = ["rerun", "grpo", "--local", "--init-model", str(model), "--data", str(alone)]
    assert main([*args, "--set", f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert f"--rl-data: {alone}: its images are keys into data_prep's image store" in err
    assert "--images" in err
    given = Namespace(stage="grpo", models=[], init_model=str(model), base_model=None,
                      data=str(alone), images=str(synthetic_data_dir / "images"))  # fmt: skip
    assert input_uris(given)["images"] == str(synthetic_data_dir / "images")
