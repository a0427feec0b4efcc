"""Multi-node SFT: a pipeline task that launches a Kubeflow Trainer TrainJob and waits for it.

With `cluster.sft_launcher: trainjob` the DAG's SFT task is `sft_trainjob_op` (pipelines/ops.py;
the signature of `sft_op`, plus the cluster section as `cluster_json`). It runs in a small CPU pod, renders a TrainJob (trainer.kubeflow.org/v1alpha1) whose
nodes run `python -m coldstart.sft` under torchrun (the Trainer's torch runtime sets the PET_*
rendezvous variables), creates it with the Kubernetes API and polls until it completes or fails.
Inputs and the output model are the task's artifact URIs (s3:// under the pipeline root): the
trainer pods read and write them directly. Scheduling (GPU tolerations, node selector, /dev/shm)
lives in the runtime, k8s/trainer/runtime.yaml; credentials come from the same Secret names as
every other task. The TrainJob name is derived from the run id and output URI, so a retried
launcher attaches to its TrainJob instead of starting a second one.

No kfp import here: the launcher's component body imports this module inside its pod, where
kfp's runtime exposes no `dsl.component` (tests/pipelines/test_ops.py).
"""

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coldstart.common.config import PipelineConfig
from coldstart.common.errors import InputError
from coldstart.pipelines.cluster_config import cluster_config, image_kind, task_image

log = logging.getLogger(__name__)

API_GROUP = "trainer.kubeflow.org"
API_VERSION = "v1alpha1"
PLURAL = "trainjobs"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_ACCELERATOR = "nvidia.com/gpu"


@dataclass(frozen=True)
class TrainJobInputs:
    run_id: str
    base_model: str
    sft_data: str
    output: str
    images: str = ""  # data_prep's image store ("" for a dataset with its images inline)


def trainjob_name(inputs: TrainJobInputs) -> str:
    """Deterministic, RFC 1035 and <= 63 characters."""
    digest = hashlib.sha256(f"{inputs.run_id}\n{inputs.output}".encode()).hexdigest()[:16]
    return f"coldstart-sft-{digest}"


def _label(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63].strip("-_.") or "none"


def _env(cfg: PipelineConfig, inputs: TrainJobInputs) -> list:
    cluster = cluster_config(cfg)
    env = [
        {"name": "COLDSTART_CONFIG_JSON", "value": cfg.to_json()},
        {"name": "COLDSTART_RUN_ID", "value": inputs.run_id},
        {"name": "COLDSTART_BASE_MODEL", "value": inputs.base_model},
        {"name": "COLDSTART_SFT_DATA", "value": inputs.sft_data},
        {"name": "COLDSTART_OUTPUT", "value": inputs.output},
        {"name": "COLDSTART_IMAGES", "value": inputs.images},
    ]
    refs = []
    if cluster.s3_secret:
        refs += [
            ("secretKeyRef", cluster.s3_secret, k, v, False)
            for k, v in cluster.s3_secret_keys.items()
        ]
    if cluster.mlflow_secret:
        refs += [
            ("secretKeyRef", cluster.mlflow_secret, k, v, True)
            for k, v in cluster.mlflow_secret_keys.items()
        ]
    if cluster.env_config_map:
        refs += [
            ("configMapKeyRef", cluster.env_config_map, k, v, True)
            for k, v in cluster.env_config_map_keys.items()
        ]
    for ref, name, key, var, optional in refs:
        env.append(
            {"name": var, "valueFrom": {ref: {"name": name, "key": key, "optional": optional}}}
        )
    return env


def _resources_per_node(cfg: PipelineConfig) -> dict:
    res = cluster_config(cfg).resources.sft
    requests = {"cpu": res.cpu, "memory": res.memory}
    limits = {"cpu": res.cpu_limit or res.cpu, "memory": res.memory_limit or res.memory}
    if res.accelerator_count:
        gpu = res.accelerator_type or DEFAULT_ACCELERATOR
        requests[gpu] = limits[gpu] = str(res.accelerator_count)
    return {"requests": requests, "limits": limits}


def render_trainjob(cfg: PipelineConfig, inputs: TrainJobInputs, namespace: str) -> dict:
    """The TrainJob manifest (a plain dict, as the Kubernetes API takes it)."""
    cluster = cluster_config(cfg)
    tj, res = cluster.trainjob, cluster.resources.sft
    trainer = {
        "image": task_image(res, image_kind(cfg, "sft"), cluster),
        "command": list(tj.command),
        "env": _env(cfg, inputs),
        "numNodes": tj.num_nodes,
        "numProcPerNode": tj.procs_per_node or max(1, res.accelerator_count),
        "resourcesPerNode": _resources_per_node(cfg),
    }
    spec = {
        "runtimeRef": {"name": tj.runtime, "apiGroup": API_GROUP, "kind": tj.runtime_kind},
        "trainer": trainer,
    }
    if tj.timeout_s:
        spec["activeDeadlineSeconds"] = tj.timeout_s
    labels = {
        "app.kubernetes.io/part-of": "coldstart",
        "coldstart/stage": "sft",
        "coldstart/run-id": _label(inputs.run_id),
    }
    metadata = {"name": trainjob_name(inputs), "namespace": namespace, "labels": labels}
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "TrainJob",
        "metadata": metadata,
        "spec": spec,
    }


def trainjob_state(obj: dict) -> tuple:
    """('Complete' | 'Failed' | None, reason text) from the TrainJob's status conditions."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return cond["type"], f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    return None, ""


class TrainJobClient:
    """The four calls the launcher makes, on kubernetes.client.CustomObjectsApi (or a test double)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def create(self, manifest: dict) -> None:
        ns = manifest["metadata"]["namespace"]
        self.api.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, manifest)

    def get(self, namespace: str, name: str) -> dict | None:
        try:
            return self.api.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name
            )
        except Exception as exc:  # kubernetes.client.ApiException; 404 = gone
            if getattr(exc, "status", None) == 404:
                return None
            raise

    def delete(self, namespace: str, name: str) -> None:
        self.api.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)


def create_or_attach(client: TrainJobClient, manifest: dict, sleep: Callable = time.sleep) -> str:
    """Create the TrainJob; if it exists (a retried launcher), attach to it, or replace it when it failed."""
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    existing = client.get(ns, name)
    if existing is not None:
        state, _ = trainjob_state(existing)
        if state != "Failed":
            log.info("TrainJob %s/%s exists (%s): attaching", ns, name, state or "running")
            return "attached"
        log.info("TrainJob %s/%s failed before: deleting it and starting again", ns, name)
        client.delete(ns, name)
        while client.get(ns, name) is not None:
            sleep(2.0)
    client.create(manifest)
    log.info("created TrainJob %s/%s", ns, name)
    return "created"


def wait_for_trainjob(
    client: TrainJobClient,
    namespace: str,
    name: str,
    poll_s: float,
    timeout_s: float = 0.0,
    sleep: Callable = time.sleep,
    clock: Callable = time.monotonic,
) -> None:
    """Poll until Complete; raise with the condition's reason on Failed, a vanished job or a timeout."""
    start = clock()
    while True:
        obj = client.get(namespace, name)
        if obj is None:
            raise RuntimeError(
                f"TrainJob {namespace}/{name} disappeared while running (deleted by someone?)"
            )
        state, reason = trainjob_state(obj)
        if state == "Complete":
            return
        if state == "Failed":
            raise RuntimeError(
                f"TrainJob {namespace}/{name} failed ({reason}); "
                f"see: kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name}"
            )
        if timeout_s and clock() - start > timeout_s:
            client.delete(namespace, name)
            raise TimeoutError(
                f"TrainJob {namespace}/{name} not done after {timeout_s:.0f}s; deleted it"
            )
        sleep(poll_s)


def current_namespace(path: str = NAMESPACE_FILE) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        raise InputError(
            "not running in a pod: set cluster.trainjob.namespace to the TrainJob's namespace"
        ) from None


def kubernetes_client() -> TrainJobClient:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return TrainJobClient(client.CustomObjectsApi())


def launch_and_wait(
    cfg: PipelineConfig, inputs: TrainJobInputs, client: TrainJobClient | None = None
) -> dict:
    """Run SFT as a TrainJob; returns the launcher's metrics."""
    given = [inputs.base_model, inputs.sft_data, inputs.output] + [inputs.images] * bool(
        inputs.images
    )
    local = [u for u in given if "://" not in u]
    if local:
        raise InputError(
            f"the TrainJob launcher needs object-store URIs (a cluster with an s3:// pipeline root); "
            f"got local paths {local}. Use cluster.sft_launcher: pod locally."
        )
    tj = cluster_config(cfg).trainjob
    manifest = render_trainjob(cfg, inputs, tj.namespace or current_namespace())
    client = client or kubernetes_client()
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    start = time.monotonic()
    create_or_attach(client, manifest)
    wait_for_trainjob(client, ns, name, tj.poll_interval_s, tj.timeout_s)
    if tj.delete_when_done:
        client.delete(ns, name)
    return {
        "sft/trainjob_nodes": float(tj.num_nodes),
        "sft/trainjob_seconds": time.monotonic() - start,
    }
