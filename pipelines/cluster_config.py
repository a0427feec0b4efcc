"""What the cluster needs to run the pipeline: pods, scheduling, volumes, images, credentials.

Kept apart from the training config (components/common/config.py): changing a GPU count, a
toleration or an image tag changes no hyperparameter, no checkpoint hash and no cache key of a
stage's inputs. In a YAML config it is the top-level `cluster:` section; the training schema
carries that section through unread (`PipelineConfig.cluster`, excluded from the stages' JSON)
and `cluster_config(cfg)` validates it here, when the DAG is built.

Credentials are referenced by Kubernetes Secret *names* only; their values never enter the
config, the pipeline parameters or the compiled YAML. kfp.local ignores everything here except
`caching`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from coldstart.common.config import ConfigError, PipelineConfig, _format_errors, _Strict
from coldstart.common.images import STAGE_IMAGES, image_ref


class TolerationConfig(_Strict):
    """One Kubernetes toleration (pod spec `tolerations[]`), e.g. for tainted GPU nodes."""

    key: str | None = Field(
        None, description="taint key; empty with operator Exists = tolerate every taint"
    )
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = Field(None, description="taint value (operator Equal only)")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(
        None, ge=0, description="NoExecute only: evict after this long"
    )

    @model_validator(mode="after")
    def _operator_fits(self) -> TolerationConfig:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if not self.key and self.operator != "Exists":
            raise ValueError(
                "a toleration without key needs operator Exists (it then matches every taint)"
            )
        return self


_QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"


class ResourcesConfig(_Strict):
    """What one stage's pod asks the cluster for."""

    image: str | None = Field(
        None, description="container image; default: the stage's image from images.py"
    )
    cpu: str = Field("2", description="CPU request (and limit unless cpu_limit is set)")
    memory: str = Field("8Gi", description="memory request (and limit unless memory_limit is set)")
    cpu_limit: str | None = Field(None, description="CPU limit; None = same as the request")
    memory_limit: str | None = Field(None, description="memory limit; None = same as the request")
    accelerator_type: str | None = Field(
        None, description="resource name, e.g. nvidia.com/gpu (the default when count > 0)"
    )
    accelerator_count: int = Field(0, ge=0, le=16)
    shm_size: str = Field(
        "16Gi", description="size of the memory-backed emptyDir mounted at /dev/shm"
    )
    scratch_size: str | None = Field(
        None,
        pattern=_QUANTITY,
        description="volume at /scratch for checkpoint staging and downloads (COLDSTART_SCRATCH "
        "and TMPDIR point at it); None = the container's own disk, i.e. the node's root disk",
    )
    staging_size: str | None = Field(
        None,
        pattern=_QUANTITY,
        description="volume where the KFP launcher stages the task's input and output artifacts "
        "(/s3, /minio or /gcs by the pipeline root's scheme); None = the node's root disk",
    )
    timeout_s: int = Field(0, ge=0, description="pod activeDeadlineSeconds; 0 = no timeout")
    retries: int = Field(0, ge=0, le=10, description="retries of a failed pod (transient failures)")
    retry_backoff_s: int = Field(
        60, ge=1, le=3600, description="wait before the first retry; doubles each time"
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="extra node labels this stage's pod requires (added to cluster.gpu_node_selector)",
    )
    tolerations: list[TolerationConfig] = Field(
        default_factory=list,
        description="extra tolerations of this stage's pod (added to cluster.gpu_tolerations)",
    )

    @model_validator(mode="before")
    @classmethod
    def _cpu_as_text(cls, data: Any) -> Any:
        """`--set cluster.resources.sft.cpu=8` parses as a number; CPU quantities are strings."""
        if isinstance(data, dict):
            for key in ("cpu", "cpu_limit"):
                if isinstance(data.get(key), (int, float)) and not isinstance(data.get(key), bool):
                    data = {**data, key: f"{data[key]:g}"}
        return data


class StageResources(_Strict):
    """Per stage; `data_prep` also sizes the base_model task, `grpo` the ablation's RL-only run."""

    data_prep: ResourcesConfig = ResourcesConfig()
    sft: ResourcesConfig = ResourcesConfig()
    grpo: ResourcesConfig = ResourcesConfig()
    eval: ResourcesConfig = ResourcesConfig()


TRAINJOB_SFT_COMMAND = [
    "bash",
    "-c",
    'printf "%s" "$COLDSTART_CONFIG_JSON" > /tmp/coldstart-config.json && '
    "exec python -m torch.distributed.run -m coldstart.sft "
    '--config /tmp/coldstart-config.json --run-id "$COLDSTART_RUN_ID" --base-model "$COLDSTART_BASE_MODEL" '
    '--data "$COLDSTART_SFT_DATA" ${COLDSTART_IMAGES:+--images "$COLDSTART_IMAGES"} '
    '--output "$COLDSTART_OUTPUT"',
]


class TrainJobConfig(_Strict):
    """Multi-node SFT as a Kubeflow Trainer TrainJob (cluster.sft_launcher: trainjob); see k8s/trainer/.

    The launcher task creates the TrainJob and waits for it. Per-node resources and the image come
    from cluster.resources.sft; inputs and the output model are s3:// URIs under the pipeline
    root, handed to the trainer pods as COLDSTART_* environment variables (plus the training
    config as COLDSTART_CONFIG_JSON).
    """

    runtime: str = Field(
        "coldstart-torch", min_length=1, description="name of the (Cluster)TrainingRuntime"
    )
    runtime_kind: Literal["TrainingRuntime", "ClusterTrainingRuntime"] = Field(
        "TrainingRuntime",
        description="TrainingRuntime: in the TrainJob's namespace (k8s/trainer); or cluster-wide",
    )
    num_nodes: int = Field(2, ge=1, le=1024)
    procs_per_node: int | None = Field(
        None, ge=1, le=64, description="None = cluster.resources.sft.accelerator_count (or 1)"
    )
    namespace: str | None = Field(
        None, description="None = the namespace the pipeline's pods run in"
    )
    command: list[str] = Field(
        default_factory=lambda: list(TRAINJOB_SFT_COMMAND),
        min_length=1,
        description="trainer container command; reads the COLDSTART_* env vars",
    )
    timeout_s: int = Field(
        0, ge=0, description="give up (and delete the TrainJob) after this long; 0 = wait forever"
    )
    poll_interval_s: float = Field(30.0, gt=0.0, le=3600.0)
    delete_when_done: bool = Field(
        False, description="delete the TrainJob after success (kept by default for logs)"
    )


class ClusterConfig(_Strict):
    """Kubernetes-only settings: pods per stage, scheduling, credentials, images, caching."""

    resources: StageResources = StageResources()
    pipeline_root: str | None = Field(
        None,
        pattern=r"^(s3|minio|gs)://[^/]+",
        description="s3://bucket/prefix for this run's artifacts; None = the server's default (kfp-launcher ConfigMap)",
    )
    service_account: str | None = Field(
        None, description="service account of the run's pods; None = pipeline-runner"
    )
    caching: bool = Field(
        True,
        description="reuse a task's outputs when its inputs are unchanged (`--no-cache` overrides)",
    )
    image_registry: str | None = Field(
        None, description="registry of the stage images; None = $COLDSTART_REGISTRY or the default"
    )
    image_tag: str | None = Field(
        None,
        description="tag of the stage images (the one docker/build.sh printed); None = "
        "$COLDSTART_IMAGE_TAG. compile and submit refuse an unset or `latest` tag",
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secret names for a private registry"
    )
    volume_kind: Literal["ephemeral", "empty_dir"] = Field(
        "ephemeral",
        description="what backs scratch_size / staging_size: a generic ephemeral volume (a PVC of "
        "storage_class made for the pod and deleted with it), or an emptyDir on the node's disk",
    )
    storage_class: str | None = Field(
        None, description="StorageClass of the ephemeral volumes; None = the cluster's default"
    )
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="node labels every GPU task requires, e.g. {nvidia.com/gpu.present: 'true'}",
    )
    gpu_tolerations: list[TolerationConfig] = Field(
        default_factory=lambda: [
            TolerationConfig(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        ],
        description="tolerations of every GPU task (GPU node pools are usually tainted)",
    )
    s3_secret: str | None = Field(
        "coldstart-s3-credentials", description="Secret with the S3 keys; None = no S3 env"
    )
    s3_secret_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        },
        description="{key in the Secret: environment variable}",
    )
    mlflow_secret: str | None = Field(
        "coldstart-mlflow-credentials",
        description="Secret with MLflow basic-auth credentials (optional in the pod)",
    )
    mlflow_secret_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        },
    )
    env_config_map: str | None = Field(
        "coldstart-env",
        description="ConfigMap with non-secret endpoints (S3 endpoint, MLflow URI); keys optional",
    )
    env_config_map_keys: dict[str, str] = Field(
        default_factory=lambda: {
            k: k
            for k in (
                "COLDSTART_S3_ENDPOINT_URL",
                "COLDSTART_S3_ADDRESSING_STYLE",
                "AWS_DEFAULT_REGION",
                "MLFLOW_TRACKING_URI",
                "MLFLOW_S3_ENDPOINT_URL",
            )
        },
    )
    model_cache_pvc: str | None = Field(
        None,
        description="PVC mounted in every task as a model/hub cache (ReadWriteMany when tasks run in parallel)",
    )
    model_cache_mount: str = Field(
        "/cache", pattern=r"^/", description="mount path of model_cache_pvc; HF_HOME below it"
    )
    sft_launcher: Literal["pod", "trainjob"] = Field(
        "pod",
        description="pod: SFT in the task's pod (torchrun over its GPUs); trainjob: multi-node Kubeflow TrainJob",
    )
    trainjob: TrainJobConfig = TrainJobConfig()

    def staging_mount(self) -> str:
        """Where the KFP launcher puts a task's artifacts: its LocalPathForURI of the pipeline root
        (s3:// -> /s3, minio:// -> /minio, gs:// -> /gcs); the launcher's default root is s3 here."""
        scheme = (self.pipeline_root or "s3://").split("://", 1)[0]
        return {"s3": "/s3", "minio": "/minio", "gs": "/gcs"}[scheme]


class _Section(_Strict):
    cluster: ClusterConfig


def cluster_config(cfg: PipelineConfig) -> ClusterConfig:
    """Validate the `cluster:` section the training config carried through, naming bad fields."""
    try:
        return _Section.model_validate({"cluster": cfg.cluster}).cluster
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, "the cluster section")) from None


def image_kind(cfg: PipelineConfig, stage: str) -> str:
    """The image a stage's task needs: vLLM lives only in `rollout` (it pins its own torch), and
    data_prep's teacher distillation needs CUDA torch when the task has GPUs."""
    distill = cfg.data.distill
    if stage == "grpo" and cfg.grpo.rollout_backend == "vllm":
        return "rollout"
    if stage == "eval" and cfg.eval.backend == "vllm":
        return "rollout"
    if stage == "data_prep" and distill.enabled:
        if distill.backend == "vllm":
            return "rollout"
        if cluster_config(cfg).resources.data_prep.accelerator_count:
            return "train"
    return STAGE_IMAGES[stage]


def task_image(res: ResourcesConfig, kind: str, cluster: ClusterConfig | None = None) -> str:
    """The stage's own `resources.image`, else the image of `kind` under the configured registry/tag."""
    if res.image:
        return res.image
    if cluster is not None:
        return image_ref(kind, cluster.image_registry, cluster.image_tag)
    return image_ref(kind)
