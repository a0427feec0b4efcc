"""What a task asks of the cluster: image, CPU/memory, accelerators, scheduling, secrets, caching.

Set here, in pipelines/ only, from the config's `cluster` section (pipelines/cluster_config.py);
kfp.local ignores all of it (caching aside), so the same pipeline function runs on a laptop and
on the cluster. The DAG calls `configure_task(task, cfg, stage)` once per task.

Credentials are wired by Kubernetes Secret *name* (`use_secret_as_env`): the compiled YAML holds
the name and the key -> env-var map, never a value.
"""

from __future__ import annotations

import os

from kfp import kubernetes
from kfp.dsl import PipelineTask

from coldstart.common.config import PipelineConfig
from coldstart.common.images import STAGE_IMAGES
from coldstart.pipelines.caching import CACHE_SALT_ENV
from coldstart.pipelines.cluster_config import (
    ClusterConfig,
    ResourcesConfig,
    TolerationConfig,
    cluster_config,
    image_kind,
    task_image,
)

DEFAULT_ACCELERATOR = "nvidia.com/gpu"

SCRATCH_MOUNT = "/scratch"
# Which cluster.resources entry sizes which task. Several tasks may share one (e.g. the RL-only
# GRPO branch of the ablation uses grpo's).
_SECTIONS = {
    "data_prep": "data_prep",
    "base_model": "data_prep",
    "sft": "sft",
    "grpo": "grpo",
    "eval": "eval",
}


def stage_resources(cfg: PipelineConfig, stage: str) -> ResourcesConfig:
    if stage not in _SECTIONS:
        raise ValueError(f"unknown stage {stage!r}; valid: {sorted(_SECTIONS)}")
    return getattr(cluster_config(cfg).resources, _SECTIONS[stage])


def launcher_resources(res: ResourcesConfig) -> ResourcesConfig:
    """The pod of a task that waits on other pods: little CPU and memory, the stage's retries."""
    return ResourcesConfig(
        cpu="500m",
        memory="1Gi",
        shm_size="64Mi",
        retries=res.retries,
        retry_backoff_s=res.retry_backoff_s,
    )


def configure_task(task: PipelineTask, cfg: PipelineConfig, stage: str) -> PipelineTask:
    """Everything the cluster needs to run one task of `stage`; call it for every task of the DAG."""
    cluster = cluster_config(cfg)
    res, kind = stage_resources(cfg, stage), image_kind(cfg, stage)
    if _is_trainjob_launcher(task, cluster, stage):
        # The task only launches and watches a TrainJob, which holds the GPUs: a small CPU pod.
        res, kind = launcher_resources(res), "cpu"
    apply_resources(task, res, stage, cluster, kind)
    apply_volumes(task, res, cluster)
    apply_scheduling(task, res, cluster)
    apply_credentials(task, cluster)
    if stage == "eval":
        apply_extractor_key(task, cfg)
    apply_model_cache(task, cluster)
    # The KFP run id as env (Downward API): env vars are not part of the cache fingerprint, unlike
    # a `pipeline_run_id` input, which makes every run's fingerprint unique.
    kubernetes.use_field_path_as_env(
        task, env_name="KFP_RUN_ID", field_path="metadata.labels['pipeline/runid']"
    )
    task.set_caching_options(enable_caching=cluster.caching)
    if salt := os.environ.get(CACHE_SALT_ENV):  # local runs only (pipelines/local.py)
        task.set_env_variable(CACHE_SALT_ENV, salt)
    return task


def _is_trainjob_launcher(task: PipelineTask, cluster: ClusterConfig, stage: str) -> bool:
    launcher = task.component_spec.name == "sft-trainjob-op"
    if stage == "sft" and cluster.sft_launcher == "trainjob" and not launcher:
        raise ValueError(
            "cluster.sft_launcher is 'trainjob' but the DAG's SFT task is not the TrainJob launcher; "
            "build it with coldstart.pipelines.ops.select_sft_op(cfg)"
        )
    return launcher


def apply_resources(
    task: PipelineTask,
    res: ResourcesConfig,
    stage: str,
    cluster: ClusterConfig | None = None,
    kind: str | None = None,
) -> PipelineTask:
    task.set_container_image(task_image(res, kind or STAGE_IMAGES[stage], cluster))
    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu_limit or res.cpu)
    task.set_memory_request(res.memory).set_memory_limit(res.memory_limit or res.memory)
    if res.accelerator_count:
        task.set_accelerator_type(res.accelerator_type or DEFAULT_ACCELERATOR)
        task.set_accelerator_limit(res.accelerator_count)
    # NCCL and dataloader workers need more shared memory than the container runtime's 64 MiB.
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=res.shm_size
    )
    if res.retries:
        task.set_retry(
            num_retries=res.retries, backoff_duration=f"{res.retry_backoff_s}s", backoff_factor=2.0
        )
    if res.timeout_s:
        kubernetes.set_timeout(task, res.timeout_s)
    return task


def apply_volumes(task: PipelineTask, res: ResourcesConfig, cluster: ClusterConfig) -> PipelineTask:
    """Room off the node's root disk, sized per stage: /scratch for checkpoint staging and
    downloads (COLDSTART_SCRATCH and TMPDIR point there), and the launcher's artifact staging
    directory. A generic ephemeral volume is a PVC made for the pod and deleted with it."""
    volumes = [("scratch", SCRATCH_MOUNT, res.scratch_size)]
    volumes.append(("staging", cluster.staging_mount(), res.staging_size))
    for name, mount, size in volumes:
        if not size:
            continue
        if cluster.volume_kind == "empty_dir":
            kubernetes.empty_dir_mount(task, volume_name=name, mount_path=mount, size_limit=size)
        else:
            kubernetes.add_ephemeral_volume(
                task,
                volume_name=name,
                mount_path=mount,
                access_modes=["ReadWriteOnce"],
                size=size,
                storage_class_name=cluster.storage_class,
                labels={"app.kubernetes.io/part-of": "coldstart"},
            )
    if res.scratch_size:
        task.set_env_variable("COLDSTART_SCRATCH", SCRATCH_MOUNT)
        task.set_env_variable("TMPDIR", SCRATCH_MOUNT)
    return task


def apply_scheduling(
    task: PipelineTask, res: ResourcesConfig, cluster: ClusterConfig
) -> PipelineTask:
    """GPU tasks go to GPU nodes (node selector + tolerations of the cluster section), plus the stage's own."""
    uses_gpu = res.accelerator_count > 0
    selector = {**(cluster.gpu_node_selector if uses_gpu else {}), **res.node_selector}
    for key, value in selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in [*(cluster.gpu_tolerations if uses_gpu else []), *res.tolerations]:
        _add_toleration(task, tol)
    if cluster.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, cluster.image_pull_secrets)
    return task


def _add_toleration(task: PipelineTask, tol: TolerationConfig) -> None:
    kubernetes.add_toleration(
        task,
        key=tol.key,
        operator=tol.operator,
        value=tol.value,
        effect=tol.effect,
        toleration_seconds=tol.toleration_seconds,
    )


def apply_extractor_key(task: PipelineTask, cfg: PipelineConfig) -> PipelineTask:
    """The LLM extractor's API key (eval.extractor.api_key_secret) as the env var it reads; by
    Secret name only, like the other credentials."""
    extractor = cfg.eval.extractor
    if extractor is not None and extractor.api_key_secret and extractor.api_key_env:
        kubernetes.use_secret_as_env(
            task,
            secret_name=extractor.api_key_secret,
            secret_key_to_env={extractor.api_key_env: extractor.api_key_env},
        )
    return task


def apply_credentials(task: PipelineTask, cluster: ClusterConfig) -> PipelineTask:
    """S3 keys (required) and MLflow auth (optional) from Secrets; endpoints from a ConfigMap."""
    if cluster.s3_secret:
        kubernetes.use_secret_as_env(
            task, secret_name=cluster.s3_secret, secret_key_to_env=cluster.s3_secret_keys
        )
    if cluster.mlflow_secret:
        kubernetes.use_secret_as_env(
            task,
            secret_name=cluster.mlflow_secret,
            secret_key_to_env=cluster.mlflow_secret_keys,
            optional=True,
        )
    if cluster.env_config_map:
        kubernetes.use_config_map_as_env(
            task,
            config_map_name=cluster.env_config_map,
            config_map_key_to_env=cluster.env_config_map_keys,
            optional=True,
        )
    return task


def apply_model_cache(task: PipelineTask, cluster: ClusterConfig) -> PipelineTask:
    """A shared PVC for downloaded models and hub files, so a retried or later task does not refetch."""
    if cluster.model_cache_pvc:
        kubernetes.mount_pvc(
            task, pvc_name=cluster.model_cache_pvc, mount_path=cluster.model_cache_mount
        )
        task.set_env_variable("HF_HOME", f"{cluster.model_cache_mount.rstrip('/')}/huggingface")
        task.set_env_variable("COLDSTART_MODEL_CACHE", cluster.model_cache_mount)
    return task
