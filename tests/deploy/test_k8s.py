"""k8s/: every kustomization renders, every object is valid Kubernetes, and the pieces fit.

Rendered with `kubectl kustomize` (skipped with a message where kubectl is absent), validated
offline with `kubernetes-validate` (strict schemas: unknown fields are errors) for the oldest and
the newest Kubernetes version we check. Custom resources (the Kubeflow Trainer's TrainingRuntime,
TrainJob) are validated against the CRD schemas of the pinned Trainer release (tests/deploy/crds/).
"""

from __future__ import annotations

import functools
from pathlib import Path

import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import pytest
import yaml

from coldstart.common.images import DEFAULT_REGISTRY, IMAGE_KINDS
from coldstart.pipelines.cluster_config import ClusterConfig
from tests.deploy.crds.schema import validation_errors as crd_validation_errors
from tests.deploy.manifests import (
    K8S,
    KUSTOMIZATIONS,
    OVERLAYS,
    containers,
    find,
    needs_kubectl,
    pod_specs,
    rel,
    render,
)

pytestmark = needs_kubectl

K8S_VERSIONS = ("1.30", kv_utils.major_minor(kv_utils.latest_version()))
# Kinds without a schema in kubernetes-validate that k8s/ may contain; anything else without a
# schema is an error (a typo in `kind:` must not pass as a "custom resource").
CUSTOM_KINDS = {"TrainingRuntime", "ClusterTrainingRuntime", "TrainJob"}
PLACEHOLDER = "REPLACE_ME"


@pytest.fixture(scope="module", autouse=True)
def _cached_schemas():
    """kubernetes-validate reads its 1.3 MB definitions file on every call: read each file once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            kv_utils, "schema_contents", functools.lru_cache(maxsize=None)(kv_utils.schema_contents)
        )
        yield


def overlay_ids(paths: list[Path]) -> list[str]:
    return [rel(p) for p in paths]


def secret_templates() -> dict[str, dict]:
    return {s["metadata"]["name"]: s for s in find(render(K8S / "secrets"), "Secret")}


# --------------------------------------------------------------------------- render + schema


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=overlay_ids(KUSTOMIZATIONS))
def test_kustomization_renders(path):
    objs = render(path)
    assert objs, f"{rel(path)} renders nothing"
    for obj in objs:
        assert {"apiVersion", "kind", "metadata"} <= set(obj), obj
        assert obj["metadata"].get("name"), obj
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"{rel(path)}: duplicate objects"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=overlay_ids(KUSTOMIZATIONS))
def test_rendered_objects_match_the_kubernetes_schema(path, version):
    errors = []
    for obj in render(path):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if obj["kind"] not in CUSTOM_KINDS:
                errors.append(
                    f"{where}: no Kubernetes {version} schema for {obj['apiVersion']} {obj['kind']}"
                )
                continue
            errors += [f"{where} (Trainer CRD): {e}" for e in crd_validation_errors(obj)]
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{where}: {list(err.absolute_path)}: {err.message}")
    assert not errors, f"{rel(path)} against Kubernetes {version}:\n" + "\n".join(errors)


# --------------------------------------------------------------------------- secrets


def test_secret_templates_hold_placeholders_only():
    templates = secret_templates()
    assert {"coldstart-s3-credentials", "coldstart-mlflow-db"} <= set(templates)
    for name, secret in templates.items():
        assert "data" not in secret, (
            f"{name}: use stringData with placeholders, never encoded values"
        )
        values = secret.get("stringData", {})
        assert values and all(v == PLACEHOLDER for v in values.values()), f"{name}: {values}"


@pytest.mark.parametrize(
    "path", [K8S / "base", *OVERLAYS], ids=overlay_ids([K8S / "base", *OVERLAYS])
)
def test_builds_contain_no_secrets(path):
    """`kubectl apply -k` of an overlay must never overwrite the credentials a user created."""
    assert not find(render(path), "Secret")


# --------------------------------------------------------------------------- references


def _env_refs(pod: dict):
    for c in containers(pod):
        for env in c.get("env", []):
            src = env.get("valueFrom", {})
            for kind in ("secretKeyRef", "configMapKeyRef"):
                if kind in src:
                    yield (
                        c["name"],
                        kind,
                        src[kind]["name"],
                        src[kind]["key"],
                        src[kind].get("optional", False),
                    )
        for env_from in c.get("envFrom", []):
            for kind in ("secretRef", "configMapRef"):
                if kind in env_from:
                    ref = env_from[kind]
                    yield c["name"], kind, ref["name"], None, ref.get("optional", False)


@pytest.mark.parametrize("path", OVERLAYS, ids=overlay_ids(OVERLAYS))
def test_every_reference_resolves(path):
    """Secret keys exist in the templates; ConfigMaps, PVCs, service accounts in the build."""
    objs, secrets = render(path), secret_templates()
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in find(objs, "ConfigMap")}
    claims = {c["metadata"]["name"] for c in find(objs, "PersistentVolumeClaim")}
    accounts = {a["metadata"]["name"] for a in find(objs, "ServiceAccount")} | {"default"}
    errors = []
    for obj in objs:
        for pod in pod_specs(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            for container, kind, name, key, optional in _env_refs(pod):
                if kind.startswith("secret"):
                    if name not in secrets or (key and key not in secrets[name]["stringData"]):
                        errors.append(
                            f"{where}/{container}: {kind} {name}.{key} not in k8s/secrets"
                        )
                elif not optional and (
                    name not in config_maps or (key and key not in config_maps[name])
                ):
                    errors.append(f"{where}/{container}: {kind} {name}.{key} not in the build")
            for volume in pod.get("volumes", []):
                if (
                    "persistentVolumeClaim" in volume
                    and volume["persistentVolumeClaim"]["claimName"] not in claims
                ):
                    errors.append(
                        f"{where}: PVC {volume['persistentVolumeClaim']['claimName']} not in the build"
                    )
                if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                    errors.append(
                        f"{where}: ConfigMap volume {volume['configMap']['name']} not in the build"
                    )
            if pod.get("serviceAccountName", "default") not in accounts:
                errors.append(
                    f"{where}: service account {pod['serviceAccountName']} not in the build"
                )
    for binding in find(objs, "RoleBinding"):
        for subject in binding["subjects"]:
            if subject["kind"] == "ServiceAccount" and subject["name"].startswith("coldstart-"):
                assert subject["name"] in accounts, binding
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", OVERLAYS, ids=overlay_ids(OVERLAYS))
def test_services_select_pods_of_the_build(path):
    objs = render(path)
    labels = [
        o["spec"]["template"]["metadata"].get("labels", {})
        for o in objs
        if o["kind"] == "Deployment"
    ]
    for svc in find(objs, "Service"):
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= lab.items() for lab in labels), (
            f"Service {svc['metadata']['name']} selects nothing"
        )
        for port in svc["spec"]["ports"]:
            assert isinstance(port["targetPort"], (int, str))


@pytest.mark.parametrize("path", OVERLAYS, ids=overlay_ids(OVERLAYS))
def test_kfp_launcher_points_the_pipeline_root_at_the_bucket(path):
    """KFP 2.x launcher config: s3:// root, provider endpoint, keys from the S3 Secret template."""
    objs, secrets = render(path), secret_templates()
    (launcher,) = find(objs, "ConfigMap", "kfp-launcher")
    root = launcher["data"]["defaultPipelineRoot"]
    assert root.startswith("s3://") and len(root) > len("s3://"), root
    default = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]
    assert default["endpoint"] and default["region"] and isinstance(default["disableSSL"], bool)
    ref = default["credentials"]["secretRef"]
    assert default["credentials"]["fromEnv"] is False
    assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= set(
        secrets[ref["secretName"]]["stringData"]
    )
    # One bucket holds the pipeline root and MLflow's artifacts.
    bucket = root.removeprefix("s3://").split("/")[0]
    (mlflow,) = find(objs, "ConfigMap", "coldstart-mlflow")
    assert mlflow["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith(f"s3://{bucket}/")
    for job in find(objs, "Job", "coldstart-create-bucket"):
        assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == bucket


def test_minio_overlay_uses_minio_everywhere():
    objs = render(K8S / "overlays" / "minio-local")
    (env,) = find(objs, "ConfigMap", "coldstart-env")
    (svc,) = find(objs, "Service", "coldstart-minio")
    api = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "api")
    endpoint = f"http://coldstart-minio:{api}"
    assert (
        env["data"]["COLDSTART_S3_ENDPOINT_URL"]
        == endpoint
        == env["data"]["MLFLOW_S3_ENDPOINT_URL"]
    )
    assert env["data"]["COLDSTART_S3_ADDRESSING_STYLE"] == "path"
    (launcher,) = find(objs, "ConfigMap", "kfp-launcher")
    provider = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]
    assert provider["endpoint"] == endpoint and provider["forcePathStyle"] is True


# --------------------------------------------------------------------------- images, security


def _images(objs: list[dict]) -> list[str]:
    return [c["image"] for o in objs for pod in pod_specs(o) for c in containers(pod)]


@pytest.mark.parametrize("path", OVERLAYS, ids=overlay_ids(OVERLAYS))
def test_images_are_ours_or_pinned(path):
    """Our images carry the names of components/common/images.py; others a version tag or digest."""
    ours = {f"{DEFAULT_REGISTRY}/coldstart-{kind}" for kind in IMAGE_KINDS}
    for image in _images(render(path)):
        name, _, tag = (
            image.rpartition(":") if "@" not in image else (image.split("@")[0], "", "digest")
        )
        if "/coldstart-" in name:
            assert name in ours, (
                f"{image}: not an image of components/common/images.py ({sorted(ours)})"
            )
        else:
            assert tag and tag != "latest" and any(ch.isdigit() for ch in tag), (
                f"{image}: pin a version tag or digest"
            )


IMAGES_COMPONENT = K8S / "components" / "images"


def test_one_images_block_sets_the_tags_of_all_of_k8s():
    """Two `images:` blocks (one per overlay) let a stacked overlay reset the other's tag."""
    with_images = [
        rel(k.parent)
        for k in sorted(K8S.rglob("kustomization.yaml"))
        if "images" in (yaml.safe_load(k.read_text()) or {})
    ]
    assert with_images == [rel(IMAGES_COMPONENT)]
    entries = yaml.safe_load((IMAGES_COMPONENT / "kustomization.yaml").read_text())["images"]
    ours = {f"{DEFAULT_REGISTRY}/coldstart-{kind}" for kind in IMAGE_KINDS}
    assert {e["name"] for e in entries} == ours
    assert all(e["newTag"] not in ("", "latest") for e in entries)


@pytest.mark.parametrize("path", OVERLAYS, ids=overlay_ids(OVERLAYS))
def test_every_image_of_ours_carries_the_tag_of_the_images_block(path):
    entries = yaml.safe_load((IMAGES_COMPONENT / "kustomization.yaml").read_text())["images"]
    tags = {e["name"]: e["newTag"] for e in entries}
    for image in _images(render(path)):
        name, _, tag = image.rpartition(":")
        if "/coldstart-" in image:
            assert tag == tags[name], f"{rel(path)}: {image}, expected tag {tags[name]}"


@pytest.mark.parametrize("path", OVERLAYS, ids=overlay_ids(OVERLAYS))
def test_our_workloads_run_as_non_root(path):
    for obj in render(path):
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for pod in pod_specs(obj):
            pod_ctx = pod.get("securityContext", {})
            for c in containers(pod):
                ctx = {**pod_ctx, **c.get("securityContext", {})}
                where = f"{obj['metadata']['name']}/{c['name']}"
                assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, where
                assert ctx.get("allowPrivilegeEscalation") is False, where
                assert "memory" in c.get("resources", {}).get("limits", {}), (
                    f"{where}: no memory limit"
                )


# --------------------------------------------------------------------------- the pipeline's view


def _cluster_defaults() -> ClusterConfig:
    return ClusterConfig()


@pytest.mark.parametrize("path", OVERLAYS, ids=overlay_ids(OVERLAYS))
def test_names_the_pipeline_config_uses_by_default_exist(path):
    """cluster.s3_secret / mlflow_secret / env_config_map defaults name what k8s/ provides."""
    cluster, objs, secrets = _cluster_defaults(), render(path), secret_templates()
    for name, keys in (
        (cluster.s3_secret, cluster.s3_secret_keys),
        (cluster.mlflow_secret, cluster.mlflow_secret_keys),
    ):
        if name:
            assert name in secrets, (
                f"cluster config names Secret {name}; k8s/secrets has {sorted(secrets)}"
            )
            assert set(keys) <= set(secrets[name]["stringData"]), name
    if cluster.env_config_map:
        (env,) = find(objs, "ConfigMap", cluster.env_config_map)
        assert set(env["data"]) <= set(cluster.env_config_map_keys), (
            "keys the pipeline would not pass to its tasks"
        )
        assert {"MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION"} <= set(env["data"])


def test_gpu_node_pool_matches_the_pipeline_defaults():
    """The GPU node-pool patch schedules like the pipeline's GPU tasks (cluster.gpu_tolerations)."""
    cluster = _cluster_defaults()
    patch = yaml.safe_load(
        (K8S / "components" / "gpu-nodepool" / "gpu-scheduling.yaml").read_text()
    )
    tolerations = next(op["value"] for op in patch if op["path"].endswith("/tolerations"))
    expected = [t.model_dump(exclude_none=True) for t in cluster.gpu_tolerations]
    assert [{k: v for k, v in t.items() if v is not None} for t in tolerations] == expected


def test_multinode_overlay_schedules_gpu_pods_on_the_gpu_pool():
    objs = render(K8S / "overlays" / "multinode-gpu")
    gpu_pods = [
        pod
        for o in objs
        if o["kind"] in ("Job", "TrainingRuntime")
        for pod in pod_specs(o)
        if any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in containers(pod)
        )
        or o["kind"] == "TrainingRuntime"
    ]
    assert find(objs, "TrainingRuntime") and len(gpu_pods) >= 2
    for pod in gpu_pods:
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
