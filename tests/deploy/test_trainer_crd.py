"""k8s/trainer and the TrainJobs pipelines/trainjob.py renders, against Kubeflow Trainer's own CRDs.

The schemas are vendored from a pinned release (tests/deploy/crds/trainer-<tag>/, made by
tests/deploy/crds/vendor.py from github.com/kubeflow/trainer): a field the release does not
have (v2.2 dropped `mlPolicy.torch.numProcPerNode`) fails here instead of at `kubectl apply`.
"""

from __future__ import annotations

import json

import pytest

from coldstart.common.config import load_config
from coldstart.pipelines.trainjob import TrainJobInputs, render_trainjob
from tests.deploy.crds.schema import HERE, TRAINER_RELEASE, crd, validation_errors
from tests.deploy.manifests import K8S, ROOT, find, needs_kubectl, render

INPUTS = TrainJobInputs("run-1", "s3://b/base", "s3://b/sft", "s3://b/out")


def test_vendored_schemas_name_their_release():
    source = json.loads((HERE / f"trainer-{TRAINER_RELEASE}" / "SOURCE.json").read_text())
    assert source["tag"] == TRAINER_RELEASE and len(source["commit"]) == 40
    assert crd("TrainingRuntime")["version"] == crd("TrainJob")["version"] == "v1alpha1"


@needs_kubectl
def test_training_runtime_of_the_multinode_overlay_matches_the_crd():
    (runtime,) = find(render(K8S / "overlays" / "multinode-gpu"), "TrainingRuntime")
    assert validation_errors(runtime) == []


def test_the_strict_check_refuses_what_the_release_dropped():
    """The check can fail: torch.numProcPerNode: auto was valid up to v2.1, gone in v2.2+."""
    runtime = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainingRuntime",
        "metadata": {"name": "x"},
        "spec": {"mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}}},
    }
    (error,) = validation_errors(runtime)
    assert "spec.mlPolicy.torch" in error and "numProcPerNode" in error


@pytest.mark.parametrize("config", ["tiny.yaml", "qwen2.5-vl-7b.yaml"])
def test_rendered_trainjob_matches_the_crd(config):
    cfg = load_config(
        ROOT / "configs" / config,
        ["cluster.sft_launcher=trainjob", "cluster.trainjob.timeout_s=3600"],
    )
    job = render_trainjob(cfg, INPUTS, "team-a")
    assert validation_errors(job) == []
    assert isinstance(job["spec"]["trainer"]["numProcPerNode"], int)


@needs_kubectl
def test_training_runtime_scratch_is_a_volume_of_its_own_writable_by_the_image_user():
    (runtime,) = find(render(K8S / "overlays" / "multinode-gpu"), "TrainingRuntime")
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    scratch = next(v for v in pod["volumes"] if v["name"] == "scratch")
    assert "ephemeral" in scratch, "checkpoints on the node's root disk get the pod evicted"
    assert pod["securityContext"]["fsGroup"] == 10001
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["COLDSTART_SCRATCH"] == env["TMPDIR"] == "/scratch"
