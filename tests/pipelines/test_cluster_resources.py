"""The compiled YAML asks the cluster for what the config says: accelerators, CPU/memory, GPU
scheduling, /dev/shm, secrets and endpoints as env, retries, timeouts, caching, a model-cache PVC."""

from pathlib import Path

import pytest
import yaml
from kfp import compiler

from coldstart.common.config import load_config
from coldstart.common.images import image_ref
from coldstart.pipelines.cluster_config import cluster_config, image_kind
from coldstart.pipelines.pipeline import build_pipeline
from coldstart.pipelines.stage_pipeline import build_stage_pipeline

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GPU_OVERRIDES = [
    "cluster.resources.data_prep.accelerator_count=2",
    "cluster.resources.data_prep.cpu=8",
    "cluster.resources.data_prep.memory=64Gi",
    "cluster.resources.data_prep.memory_limit=80Gi",
    "cluster.resources.data_prep.shm_size=32Gi",
    "cluster.resources.data_prep.retries=3",
    "cluster.resources.data_prep.retry_backoff_s=30",
    "cluster.resources.data_prep.timeout_s=7200",
    'cluster.gpu_node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}',
]


def compile_docs(pipeline_func, tmp_path):
    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline_func, str(out))
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def container(spec, executor):
    return spec["deploymentSpec"]["executors"][executor]["container"]


def assert_credentials_and_shm(k8s, executor, shm="16Gi"):
    ex = k8s[executor]
    (mount,) = ex["emptyDirMounts"]
    assert (mount["mountPath"], mount["medium"]) == ("/dev/shm", "Memory"), executor
    assert shm in (None, mount["sizeLimit"]), executor
    secrets = {s["secretName"]: s for s in ex["secretAsEnv"]}
    s3 = secrets["coldstart-s3-credentials"]
    assert {m["envVar"] for m in s3["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert not s3["optional"]  # a task without S3 keys fails at pod creation, not mid-run
    assert secrets["coldstart-mlflow-credentials"]["optional"] is True
    assert {"name": "KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in ex[
        "fieldPathAsEnv"
    ]
    (cm,) = ex["configMapAsEnv"]
    assert cm["configMapName"] == "coldstart-env"
    assert {"COLDSTART_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI"} <= {
        m["envVar"] for m in cm["keyToEnv"]
    }


def assert_on_gpu_nodes(spec, k8s, executor, count, selector=None):
    res = container(spec, executor)["resources"]
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"][
        "resourceCount"
    ] == str(count)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s[executor][
        "tolerations"
    ]
    if selector:
        assert k8s[executor]["nodeSelector"]["labels"] == selector


def test_gpu_task_requests_accelerator_on_gpu_nodes_with_shm_secrets_retries_timeout(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", GPU_OVERRIDES)
    spec, k8s = compile_docs(build_pipeline(cfg), tmp_path)
    ex = "exec-data-prep-op"
    assert_on_gpu_nodes(spec, k8s, ex, 2, {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    assert_credentials_and_shm(k8s, ex, shm="32Gi")
    res = container(spec, ex)["resources"]
    assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == ("8", "8")
    assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == ("64Gi", "80Gi")
    assert k8s[ex]["activeDeadlineSeconds"] == "7200"
    task = spec["root"]["dag"]["tasks"]["data-prep-op"]
    assert (
        task["retryPolicy"]["maxRetryCount"] == 3
        and task["retryPolicy"]["backoffDuration"] == "30s"
    )
    assert task["cachingOptions"]["enableCache"] is True


def test_cpu_tasks_get_no_gpu_scheduling_but_shm_and_credentials(tmp_path):
    spec, k8s = compile_docs(build_pipeline(load_config(CONFIGS / "tiny.yaml")), tmp_path)
    for ex in ("exec-data-prep-op", "exec-base-model-op"):
        assert "accelerator" not in container(spec, ex)["resources"]
        assert "tolerations" not in k8s[ex] and "nodeSelector" not in k8s[ex]
        assert "activeDeadlineSeconds" not in k8s[ex] and "pvcMount" not in k8s[ex]
        assert_credentials_and_shm(k8s, ex)


def test_stage_node_selector_tolerations_pull_secrets_pvc_and_caching_off(tmp_path):
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            'cluster.resources.data_prep.node_selector={"pool": "highmem"}',
            'cluster.resources.data_prep.tolerations=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]',
            "cluster.image_pull_secrets=[regcred]",
            "cluster.model_cache_pvc=coldstart-models",
            "cluster.caching=false",
            "cluster.s3_secret=my-s3",
            "cluster.mlflow_secret=null",
            "cluster.env_config_map=null",
        ],
    )
    spec, k8s = compile_docs(build_pipeline(cfg), tmp_path)
    ex = k8s["exec-data-prep-op"]
    assert ex["nodeSelector"]["labels"] == {"pool": "highmem"}
    assert ex["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ]
    assert [s["secretName"] for s in ex["imagePullSecret"]] == ["regcred"]
    assert [s["secretName"] for s in ex["secretAsEnv"]] == ["my-s3"] and "configMapAsEnv" not in ex
    (pvc,) = ex["pvcMount"]
    assert (
        pvc["mountPath"] == "/cache"
        and pvc["pvcNameParameter"]["runtimeValue"]["constant"] == "coldstart-models"
    )
    env = {e["name"]: e["value"] for e in container(spec, "exec-data-prep-op")["env"]}
    assert env["HF_HOME"] == "/cache/huggingface"
    assert not any(
        t.get("cachingOptions", {}).get("enableCache")
        for t in spec["root"]["dag"]["tasks"].values()
    )


def test_images_from_cluster_registry_and_tag_unless_the_stage_overrides(tmp_path):
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            "cluster.image_registry=registry.corp/ml",
            "cluster.image_tag=v3",
            "cluster.resources.data_prep.image=mine/dp:1",
        ],
    )
    spec, _ = compile_docs(build_pipeline(cfg), tmp_path)
    assert (
        container(spec, "exec-data-prep-op")["image"] == "mine/dp:1"
    )  # cluster.resources.data_prep also sizes base_model
    cfg = load_config(
        CONFIGS / "tiny.yaml", ["cluster.image_registry=registry.corp/ml", "cluster.image_tag=v3"]
    )
    spec, _ = compile_docs(build_pipeline(cfg), tmp_path)
    assert container(spec, "exec-base-model-op")["image"] == image_ref(
        "cpu", "registry.corp/ml", "v3"
    )
    assert container(spec, "exec-base-model-op")["image"] == "registry.corp/ml/coldstart-cpu:v3"


def test_paper_dag_schedules_every_gpu_task_on_gpu_nodes(tmp_path):
    """The whole 7B DAG (ablation branch included): every executor gets /dev/shm and credentials,
    every one that asks for GPUs also tolerates the GPU taint."""
    spec, k8s = compile_docs(build_pipeline(load_config(CONFIGS / "qwen2.5-vl-7b.yaml")), tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    gpu = {ex for ex in executors if "accelerator" in container(spec, ex).get("resources", {})}
    if not gpu:
        pytest.skip("no GPU stage wired into the DAG yet")
    for ex in executors:
        assert_credentials_and_shm(k8s, ex, shm=None)
    for ex in gpu:
        assert_on_gpu_nodes(
            spec, k8s, ex, container(spec, ex)["resources"]["accelerator"]["resourceCount"]
        )
    assert {"exec-sft-op", "exec-grpo-op", "exec-eval-op"} <= gpu


@pytest.mark.parametrize(("stage", "module", "uris", "executor", "gpus", "image"), [
    ("sft", "coldstart.sft.component", {"sft_data": "s3://b/sft"}, "exec-sft-op", 8, "train"),
    ("grpo", "coldstart.grpo.component", {"init_model": "s3://b/m", "rl_data": "s3://b/rl"}, "exec-grpo-op", 8,
     "rollout"),
    ("eval", "coldstart.eval.component", {"eval_data": "s3://b/ev", "sft_model": "s3://b/m"}, "exec-eval-op", 1,
     "rollout"),
])  # fmt: skip
def test_paper_config_gpu_stages_on_gpu_nodes(tmp_path, stage, module, uris, executor, gpus, image):
    """Each GPU stage of the 7B recipe, compiled alone (the DAG wires the same components);
    GRPO and eval use vLLM there, so they run in the rollout image."""
    pytest.importorskip(module, reason=f"{module} not written yet")
    cfg = load_config(CONFIGS / "qwen2.5-vl-7b.yaml")
    spec, k8s = compile_docs(build_stage_pipeline(cfg, stage, uris), tmp_path)
    assert_on_gpu_nodes(spec, k8s, executor, gpus)
    assert_credentials_and_shm(
        k8s, executor, shm=getattr(cluster_config(cfg).resources, stage).shm_size
    )
    assert container(spec, executor)["image"] == image_ref(image)


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], {"data_prep": "cpu", "sft": "train", "grpo": "train", "eval": "train"}),
    (["grpo.rollout_backend=vllm", "eval.backend=vllm"], {"grpo": "rollout", "eval": "rollout"}),
    (["data.distill.enabled=true", "data.distill.teacher=tiny", "data.distill.backend=vllm"], {"data_prep": "rollout"}),
    (["data.distill.enabled=true", "data.distill.teacher=tiny", "cluster.resources.data_prep.accelerator_count=1"],
     {"data_prep": "train"}),
])  # fmt: skip
def test_image_follows_the_generation_backend(overrides, expected):
    cfg = load_config(CONFIGS / "tiny.yaml", overrides)
    assert {stage: image_kind(cfg, stage) for stage in expected} == expected


def test_trainjob_launcher_is_a_small_cpu_task(tmp_path):
    """With sft_launcher=trainjob the SFT task only waits on the TrainJob: no GPUs held by it."""
    cfg = load_config(CONFIGS / "qwen2.5-vl-7b.yaml", ["cluster.sft_launcher=trainjob"])
    spec, k8s = compile_docs(build_stage_pipeline(cfg, "sft", {"sft_data": "s3://b/sft"}), tmp_path)
    ex = "exec-sft-trainjob-op"
    res = container(spec, ex)["resources"]
    assert "accelerator" not in res and res["resourceCpuRequest"] == "500m"
    assert container(spec, ex)["image"] == image_ref("cpu")
    assert "tolerations" not in k8s[ex]
    assert_credentials_and_shm(k8s, ex, shm="64Mi")
    assert spec["root"]["dag"]["tasks"]["sft-trainjob-op"]["retryPolicy"]["maxRetryCount"] == 2


def test_trainjob_option_with_the_in_pod_sft_component_is_refused():
    """A config asking for a TrainJob must not silently run in-pod SFT on the launcher's tiny pod."""
    from kfp import dsl
    from kfp.dsl import Dataset, Model

    from coldstart.pipelines.resources import configure_task

    sft = pytest.importorskip("coldstart.sft.component")
    cfg = load_config(CONFIGS / "tiny.yaml", ["cluster.sft_launcher=trainjob"])
    with pytest.raises(ValueError, match="select_sft_op"):

        @dsl.pipeline(name="wrong-sft")
        def wrong(config_json: str = "{}"):
            model = dsl.importer(artifact_uri="s3://b/m", artifact_class=Model).output
            data = dsl.importer(artifact_uri="s3://b/d", artifact_class=Dataset).output
            task = sft.sft_op(
                config_json=config_json, pipeline_run_id="r", base_model=model, sft_data=data
            )
            configure_task(task, cfg, "sft")
