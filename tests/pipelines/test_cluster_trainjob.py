"""Multi-node SFT as a Kubeflow Trainer TrainJob: the rendered manifest, the launcher's create/wait
logic against a stand-in Kubernetes API, and the k8s/trainer manifests.

The TrainJob and the TrainingRuntime are validated against the CRD schemas of the pinned Kubeflow
Trainer release (vendored, tests/deploy/crds/), undeclared fields refused. Env entries and per-node
resources are also checked against the real core/v1 schema by wrapping them in a Pod
(kubernetes-validate, offline).
"""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiException

from coldstart.common.config import load_config
from coldstart.common.errors import InputError
from coldstart.common.images import image_ref
from coldstart.pipelines.cluster_config import TrainJobConfig
from coldstart.pipelines.trainjob import (
    TrainJobClient,
    TrainJobInputs,
    create_or_attach,
    launch_and_wait,
    render_trainjob,
    trainjob_name,
    wait_for_trainjob,
)
from tests.deploy.crds.schema import validation_errors

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33"
INPUTS = TrainJobInputs(
    "9f1c2d3e-run", "s3://b/root/base_model", "s3://b/root/sft_data", "s3://b/root/sft/model"
)


def paper_cfg(*overrides):
    return load_config(ROOT / "configs" / "qwen2.5-vl-7b.yaml", [
        "cluster.sft_launcher=trainjob", "cluster.trainjob.num_nodes=4", "cluster.trainjob.timeout_s=86400",
        *overrides,
    ])  # fmt: skip


def as_pod(name, spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_rendered_trainjob_fits_the_crd_schema_and_core_types():
    cfg = paper_cfg()
    job = render_trainjob(cfg, INPUTS, "kubeflow")
    assert validation_errors(job) == []  # the vendored CRD of the pinned Trainer release
    trainer = job["spec"]["trainer"]
    env_names = [e["name"] for e in trainer["env"]]
    assert len(env_names) == len(set(env_names))  # the CRD's env is a map keyed by name
    container = {
        "name": "node",
        "image": trainer["image"],
        "command": trainer["command"],
        "env": trainer["env"],
        "resources": trainer["resourcesPerNode"],
    }
    kubernetes_validate.validate(
        as_pod("node", {"containers": [container]}), K8S_VERSION, strict=True
    )

    assert job["spec"]["runtimeRef"] == {
        "name": "coldstart-torch",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
    }
    assert (
        trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    )  # = cluster.resources.sft.accelerator_count
    assert trainer["resourcesPerNode"]["limits"] == {
        "cpu": "32",
        "memory": "320Gi",
        "nvidia.com/gpu": "8",
    }
    assert trainer["image"] == image_ref("train")
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    assert "coldstart.sft" in " ".join(trainer["command"])


def test_trainjob_env_has_config_and_uris_and_credentials_only_by_reference(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SENTINEL-not-for-yaml")
    cfg = paper_cfg()
    job = render_trainjob(cfg, INPUTS, "team-a")
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    # the training config only: the cluster section stays with the launcher
    assert load_config(None).model_validate_json(
        env["COLDSTART_CONFIG_JSON"]["value"]
    ) == cfg.model_copy(update={"cluster": {}})
    assert "trainjob" not in env["COLDSTART_CONFIG_JSON"]["value"]
    assert env["COLDSTART_BASE_MODEL"]["value"] == INPUTS.base_model
    assert env["COLDSTART_SFT_DATA"]["value"] == INPUTS.sft_data
    assert (
        env["COLDSTART_OUTPUT"]["value"] == INPUTS.output
        and env["COLDSTART_RUN_ID"]["value"] == INPUTS.run_id
    )
    key = env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {
        "name": "coldstart-s3-credentials",
        "key": "AWS_SECRET_ACCESS_KEY",
        "optional": False,
    }
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]["name"] == "coldstart-env"
    assert "SENTINEL" not in yaml.safe_dump(job)


def test_trainjob_name_is_stable_per_run_and_a_dns_label():
    name = trainjob_name(INPUTS)
    assert name == trainjob_name(INPUTS) and len(name) <= 63
    assert name != trainjob_name(
        TrainJobInputs("another-run", INPUTS.base_model, INPUTS.sft_data, INPUTS.output)
    )
    assert render_trainjob(paper_cfg(), INPUTS, "ns")["metadata"]["name"] == name


class FakeCustomObjects:
    """kubernetes.client.CustomObjectsApi for trainjobs: records calls, replays scripted conditions."""

    def __init__(self, conditions=(), existing=None):
        self.conditions = list(conditions)  # one condition list per GET after creation
        self.objects = {} if existing is None else {existing["metadata"]["name"]: existing}
        self.calls = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append("create")
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        if body["metadata"]["name"] in self.objects:
            raise ApiException(status=409)
        self.objects[body["metadata"]["name"]] = {**body, "status": {}}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("get")
        if name not in self.objects:
            raise ApiException(status=404)
        obj = self.objects[name]
        if self.conditions:
            obj["status"] = {"conditions": self.conditions.pop(0)}
        return obj

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("delete")
        self.objects.pop(name, None)


def cond(kind, reason="", message=""):
    return [{"type": kind, "status": "True", "reason": reason, "message": message}]


def fast(cfg_overrides=()):
    return paper_cfg(
        "cluster.trainjob.namespace=ns",
        "cluster.trainjob.poll_interval_s=0.001",
        "cluster.trainjob.timeout_s=0",
        *cfg_overrides,
    )


def test_launcher_creates_the_trainjob_and_waits_until_complete():
    api = FakeCustomObjects(conditions=[[], [], cond("Complete", "JobsCompleted")])
    metrics = launch_and_wait(fast(), INPUTS, TrainJobClient(api))
    assert api.calls[:2] == ["get", "create"] and api.calls.count("create") == 1
    assert metrics["sft/trainjob_nodes"] == 4.0 and metrics["sft/trainjob_seconds"] >= 0
    assert trainjob_name(INPUTS) in api.objects  # kept for its logs unless delete_when_done


def test_launcher_reports_the_failure_reason():
    api = FakeCustomObjects(
        conditions=[[], cond("Failed", "BackoffLimitExceeded", "node-1 OOMKilled")]
    )
    with pytest.raises(RuntimeError, match="BackoffLimitExceeded: node-1 OOMKilled"):
        launch_and_wait(fast(), INPUTS, TrainJobClient(api))


def test_retried_launcher_attaches_to_its_running_trainjob():
    job = render_trainjob(fast(), INPUTS, "ns")
    api = FakeCustomObjects(conditions=[[], cond("Complete")], existing={**job, "status": {}})
    launch_and_wait(fast(["cluster.trainjob.delete_when_done=true"]), INPUTS, TrainJobClient(api))
    assert "create" not in api.calls and api.calls[-1] == "delete"


def test_a_failed_trainjob_of_an_earlier_attempt_is_replaced():
    job = render_trainjob(fast(), INPUTS, "ns")
    client = TrainJobClient(
        FakeCustomObjects(existing={**job, "status": {"conditions": cond("Failed")}})
    )
    assert create_or_attach(client, job, sleep=lambda s: None) == "created"
    assert client.api.calls == ["get", "delete", "get", "create"]


def test_timeout_deletes_the_trainjob():
    job = render_trainjob(fast(), INPUTS, "ns")
    api = FakeCustomObjects(existing={**job, "status": {}})
    ticks = iter(range(100))
    with pytest.raises(TimeoutError, match="deleted it"):
        wait_for_trainjob(
            TrainJobClient(api),
            "ns",
            job["metadata"]["name"],
            1.0,
            timeout_s=3,
            sleep=lambda s: None,
            clock=lambda: next(ticks),
        )
    assert api.calls[-1] == "delete" and not api.objects


def test_launcher_needs_object_store_uris():
    with pytest.raises(InputError, match="object-store URIs"):
        launch_and_wait(
            fast(), TrainJobInputs("r", "/tmp/base", "s3://b/d", "s3://b/o"), TrainJobClient(None)
        )


def load_manifests(name):
    return list(yaml.safe_load_all((ROOT / "k8s" / "trainer" / name).read_text()))


def test_trainer_manifests_validate_and_match_the_config():
    kustomization = load_manifests("kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == ["rbac.yaml", "runtime.yaml"]

    (runtime,) = load_manifests("runtime.yaml")
    defaults = TrainJobConfig()
    assert (runtime["kind"], runtime["metadata"]["name"]) == (
        defaults.runtime_kind,
        defaults.runtime,
    )
    # v2.2+ has no mlPolicy.torch.numProcPerNode: the TrainJob sets trainer.numProcPerNode
    assert runtime["spec"]["mlPolicy"]["torch"] == {}
    assert validation_errors(runtime) == []
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    assert (
        node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"]
        == "trainer"
    )
    pod_spec = node["template"]["spec"]["template"]["spec"]
    kubernetes_validate.validate(as_pod("node", pod_spec), K8S_VERSION, strict=True)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec[
        "tolerations"
    ]
    (container,) = pod_spec["containers"]
    assert container["name"] == "node"  # the container the TrainJob's trainer section overrides
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"

    role, binding = load_manifests("rbac.yaml")
    for obj in (role, binding):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    (rule, _) = role["rules"]
    assert rule["apiGroups"] == ["trainer.kubeflow.org"] and rule["resources"] == ["trainjobs"]
    assert {"create", "get", "delete"} <= set(rule["verbs"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


@pytest.mark.parametrize("images", ["s3://b/root/images", ""])
def test_trainer_command_passes_the_image_store_only_when_there_is_one(tmp_path, images):
    """The rendered command, run by bash with its env, gives `coldstart.sft` `--images URI` for
    data_prep's store and no flag for a dataset with its images inline (`python` is a stand-in
    here that prints its arguments)."""
    import subprocess

    stand_in = tmp_path / "bin" / "python"
    stand_in.parent.mkdir()
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)
    inputs = TrainJobInputs(
        INPUTS.run_id, INPUTS.base_model, INPUTS.sft_data, INPUTS.output, images
    )
    trainer = render_trainjob(paper_cfg(), inputs, "ns")["spec"]["trainer"]
    env = {e["name"]: e["value"] for e in trainer["env"] if "value" in e}
    env["PATH"] = f"{stand_in.parent}:/usr/bin:/bin"
    ran = subprocess.run(trainer["command"], env=env, capture_output=True, text=True, check=True)
    argv = ran.stdout.splitlines()
    assert argv[argv.index("--data") + 1] == INPUTS.sft_data
    assert (argv[argv.index("--images") + 1] if "--images" in argv else "") == images


def test_a_local_image_store_is_refused_by_the_launcher():
    inputs = TrainJobInputs(
        INPUTS.run_id, INPUTS.base_model, INPUTS.sft_data, INPUTS.output, "/tmp/images"
    )
    with pytest.raises(InputError, match=r"local paths \['/tmp/images'\]"):
        launch_and_wait(paper_cfg(), inputs, client=None)
