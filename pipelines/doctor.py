"""`coldstart doctor`: a cluster admin's pre-flight check, one line per thing a run needs.

    coldstart doctor --host http://localhost:8080 [--namespace NS] [--config FILE] [--image-tag T]

Checks, from where you run it (a laptop with kubectl access and port-forwards, or a pod):
the KFP API server and its version (the compiled pipeline needs a 2.5+ backend), the GPU nodes
(enough `nvidia.com/gpu` for the biggest stage, NVIDIA driver 580+ for the CUDA 13.0 images), the
kfp-launcher ConfigMap (an s3:// root *and* its providers block, which a multi-user profile
controller drops), the Secrets the tasks read (names and keys, never values), the images
(pullable: the registry's manifest answers), the S3 bucket of the pipeline root, the MLflow server.
Each line starts with OK, WARN, FAIL or SKIP (a check that cannot run from here, and why); the
exit code is 1 when any line is FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from coldstart.common.config import PipelineConfig
from coldstart.common.stage_cli import resolve_config
from coldstart.pipelines.cluster_config import ClusterConfig, cluster_config, image_kind, task_image
from coldstart.pipelines.resources import stage_resources

MIN_KFP_BACKEND = (
    2,
    5,
    0,
)  # secretNameParameter in the compiled YAML (emptyDirMounts 2.3, fieldPathAsEnv 2.1)
MIN_DRIVER_MAJOR = 580  # CUDA 13.0 (the torch 2.14 wheels of the train/rollout images)
DRIVER_LABELS = ("nvidia.com/cuda.driver-version.major", "nvidia.com/cuda.driver.major")
GPU = "nvidia.com/gpu"
STAGES = ("data_prep", "sft", "grpo", "eval")
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip


@dataclass(frozen=True)
class Result:
    status: str  # OK | WARN | FAIL | SKIP
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}"


# --------------------------------------------------------------------------- KFP


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_kfp(host: str, token: str | None = None) -> Result:
    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            info = json.loads(r.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Result("FAIL", "kfp api", f"{url}: {exc}")
    tag = str(info.get("tag_name") or "")
    users = "multi-user" if info.get("multi_user") else "single-user"
    if not _version(tag):
        return Result("WARN", "kfp api", f"{host} answers ({users}) but reports no version")
    floor = ".".join(map(str, MIN_KFP_BACKEND))
    if _version(tag) < MIN_KFP_BACKEND:
        return Result(
            "FAIL", "kfp api", f"backend {tag} ({users}); the compiled pipeline needs {floor}+"
        )
    return Result("OK", "kfp api", f"backend {tag} ({users}) >= {floor}")


# --------------------------------------------------------------------------- nodes


def gpus_needed(cfg: PipelineConfig) -> int:
    return max(stage_resources(cfg, s).accelerator_count for s in STAGES)


def _gpus(node: dict) -> int:
    return int((node.get("status", {}).get("allocatable") or {}).get(GPU, 0) or 0)


def check_gpu_nodes(nodes: list[dict], need: int) -> list[Result]:
    """`nodes`: Node objects as the API returns them (JSON). Enough GPUs on one node, and the
    driver of every GPU node at the CUDA 13.0 floor."""
    if need == 0:
        return [Result("OK", "gpu nodes", "the config asks for no GPUs")]
    gpu_nodes = [n for n in nodes if _gpus(n)]
    if not gpu_nodes:
        return [
            Result("FAIL", "gpu nodes", f"no node advertises {GPU} (device plugin, GPU Operator)")
        ]
    biggest = max(_gpus(n) for n in gpu_nodes)
    detail = (
        f"{len(gpu_nodes)} node(s) with {GPU}, at most {biggest} per node; the config needs {need}"
    )
    return [
        Result("OK" if biggest >= need else "FAIL", "gpu nodes", detail),
        check_drivers(gpu_nodes),
    ]


def check_drivers(gpu_nodes: list[dict]) -> Result:
    """The driver's major version from GPU feature discovery's node label."""
    drivers = {}
    for node in gpu_nodes:
        labels = node.get("metadata", {}).get("labels") or {}
        drivers[node["metadata"]["name"]] = next(
            (labels[k] for k in DRIVER_LABELS if k in labels), None
        )
    old = sorted(f"{n} ({v})" for n, v in drivers.items() if v and int(v) < MIN_DRIVER_MAJOR)
    unknown = sorted(n for n, v in drivers.items() if v is None)
    if old:
        return Result(
            "FAIL", "nvidia driver", f"below {MIN_DRIVER_MAJOR} (CUDA 13.0): {', '.join(old)}"
        )
    if unknown:
        return Result("WARN", "nvidia driver", f"no driver label on {', '.join(unknown)} (GPU feature "
                      f"discovery sets {DRIVER_LABELS[0]}); check nvidia-smi shows {MIN_DRIVER_MAJOR}+")  # fmt: skip
    return Result("OK", "nvidia driver", f"{sorted(set(drivers.values()))} >= {MIN_DRIVER_MAJOR}")


# --------------------------------------------------------------------------- launcher, secrets


def check_launcher(config_map: dict | None, pipeline_root: str | None) -> Result:
    if config_map is None:
        if pipeline_root:
            return Result(
                "WARN", "kfp-launcher", f"no ConfigMap; runs set their own root {pipeline_root}"
            )
        return Result(
            "FAIL",
            "kfp-launcher",
            "no ConfigMap and no cluster.pipeline_root: runs have no artifact store",
        )
    data = config_map.get("data") or {}
    root = pipeline_root or data.get("defaultPipelineRoot", "")
    if not root.startswith("s3://"):
        return Result(
            "FAIL",
            "kfp-launcher",
            f"pipeline root {root!r} is not s3:// (k8s/overlays/*/kfp-launcher.yaml)",
        )
    if "s3" not in (yaml.safe_load(data.get("providers") or "{}") or {}):
        return Result(
            "FAIL", "kfp-launcher", "no `providers.s3` block (endpoint, credentials): on multi-user "
            "Kubeflow the profile controller rewrites this ConfigMap; configure it there (docs/kubernetes.md)"
        )  # fmt: skip
    return Result("OK", "kfp-launcher", f"root {root}, S3 provider set")


def check_secret(name: str, secret: dict | None, keys: Iterable[str], required: bool) -> Result:
    if secret is None:
        status = "FAIL" if required else "OK"
        return Result(status, f"secret {name}", "missing" + ("" if required else " (optional)"))
    missing = sorted(set(keys) - set(secret.get("data") or {}))
    if missing:
        return Result("FAIL", f"secret {name}", f"lacks keys {missing}")
    return Result("OK", f"secret {name}", f"has {sorted(keys)}")


# --------------------------------------------------------------------------- images


def _registry_url(host: str) -> str:
    local = host.split(":")[0] in ("localhost", "127.0.0.1")
    return f"{'http' if local else 'https'}://{host}"


def _bearer_token(challenge: str, repo: str, opener: Callable) -> str | None:
    """Anonymous token of a registry's `WWW-Authenticate: Bearer realm=...` challenge."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if "realm" not in fields:
        return None
    query = {
        "scope": f"repository:{repo}:pull",
        **({"service": fields["service"]} if "service" in fields else {}),
    }
    with opener(f"{fields['realm']}?{urllib.parse.urlencode(query)}") as resp:
        body = json.loads(resp.read())
    return body.get("token") or body.get("access_token")


def split_image(image: str) -> tuple[str, str, str]:
    """(registry host, repository, tag or digest), as a container runtime reads a reference."""
    if "@" in image:
        name, ref = image.split("@", 1)
    else:
        last = image.rsplit("/", 1)[-1]
        name, ref = image.rsplit(":", 1) if ":" in last else (image, "latest")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, ref
    return "registry-1.docker.io", name if "/" in name else f"library/{name}", ref


def image_pullable(image: str, opener: Callable = urllib.request.urlopen) -> tuple[bool, str]:
    """Whether the registry has a manifest for `image` (anonymous pull; private ones say 401)."""
    host, repo, ref = split_image(image)
    url = f"{_registry_url(host)}/v2/{repo}/manifests/{ref}"
    headers = {"Accept": MANIFEST_TYPES}
    for _ in range(2):
        try:
            with opener(urllib.request.Request(url, headers=headers, method="HEAD")):
                return True, "manifest found"
        except urllib.error.HTTPError as err:
            if err.code == 401 and "Authorization" not in headers:
                token = _bearer_token(err.headers.get("WWW-Authenticate", ""), repo, opener)
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                    continue
            if err.code in (401, 403):
                return (
                    False,
                    f"{err.code}: private (pods need cluster.image_pull_secrets) or no access",
                )
            return False, f"HTTP {err.code} (no such image or tag)"
        except (urllib.error.URLError, OSError) as exc:
            return False, f"registry {host} unreachable: {exc}"
    return False, "401 after token"


def check_images(cfg: PipelineConfig, opener: Callable = urllib.request.urlopen) -> list[Result]:
    cluster = cluster_config(cfg)
    images = sorted(
        {task_image(stage_resources(cfg, s), image_kind(cfg, s), cluster) for s in STAGES}
    )
    out = []
    for image in images:
        ok, why = image_pullable(image, opener)
        out.append(Result("OK" if ok else "FAIL", f"image {image}", why))
    return out


# --------------------------------------------------------------------------- S3, MLflow


def check_bucket(root: str, endpoint: str | None) -> Result:
    import boto3
    import botocore.exceptions

    bucket = urllib.parse.urlparse(root).netloc
    try:
        boto3.client("s3", endpoint_url=endpoint or None).head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        return Result(
            "FAIL",
            f"bucket {bucket}",
            f"{exc} (keys from AWS_* here, endpoint {endpoint or 'AWS'})",
        )
    return Result("OK", f"bucket {bucket}", f"reachable with these keys at {endpoint or 'AWS'}")


def check_mlflow(uri: str | None) -> Result:
    if not uri:
        return Result(
            "SKIP", "mlflow", "no MLFLOW_TRACKING_URI here or in the coldstart-env ConfigMap"
        )
    if not uri.startswith("http"):
        return Result("WARN", "mlflow", f"{uri} is not a server: runs on the cluster need one")
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as resp:
            body = resp.read().decode(errors="replace").strip()
    except (urllib.error.URLError, OSError) as exc:
        where = (
            "port-forward it, or run doctor in a pod"
            if ".svc" in uri or "://coldstart-" in uri
            else ""
        )
        return Result("FAIL", "mlflow", f"{uri}: {exc} {where}".strip())
    return Result("OK", "mlflow", f"{uri} answers /health ({body[:20]})")


# --------------------------------------------------------------------------- cluster reads


def _kube() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


def _get(call: Callable, *args: str) -> dict | None:
    from kubernetes.client import ApiException

    try:
        return json.loads(call(*args, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


@dataclass
class ClusterFacts:
    """What later checks need from the cluster: the tasks' env ConfigMap and the launcher's root."""

    env: dict
    launcher_root: str = ""


def cluster_checks(
    cfg: PipelineConfig, cluster: ClusterConfig, namespace: str
) -> tuple[list[Result], ClusterFacts]:
    """Checks that read the Kubernetes API, and the facts later checks use."""
    from kubernetes.client import ApiException

    try:
        api = _kube()
        nodes = json.loads(api.list_node(_preload_content=False).data)["items"]
    except Exception as exc:  # no kubeconfig, no access: say so and go on with the rest
        return [Result("SKIP", "kubernetes", f"cannot read the cluster from here: {exc}")], (
            ClusterFacts({})
        )
    out = check_gpu_nodes(nodes, gpus_needed(cfg))
    launcher = env = None
    try:
        launcher = _get(api.read_namespaced_config_map, "kfp-launcher", namespace)
        out.append(check_launcher(launcher, cluster.pipeline_root))
        for name, keys, required in (
            (cluster.s3_secret, cluster.s3_secret_keys, True),
            (cluster.mlflow_secret, cluster.mlflow_secret_keys, False),
        ):
            if name:
                secret = _get(api.read_namespaced_secret, name, namespace)
                out.append(check_secret(name, secret, keys, required))
        if cluster.env_config_map:
            env = _get(api.read_namespaced_config_map, cluster.env_config_map, namespace)
    except ApiException as exc:
        out.append(Result("FAIL", f"namespace {namespace}", f"{exc.status} {exc.reason}"))
    root = ((launcher or {}).get("data") or {}).get("defaultPipelineRoot", "")
    return out, ClusterFacts((env or {}).get("data") or {}, root)


def run_checks(cfg: PipelineConfig, host: str | None, namespace: str) -> list[Result]:
    cluster = cluster_config(cfg)
    token = os.environ.get("KF_PIPELINES_TOKEN")
    results = [check_kfp(host, token) if host else Result("SKIP", "kfp api", "no --host")]
    kube, facts = cluster_checks(cfg, cluster, namespace)
    results += kube
    results += check_images(cfg)
    # endpoints: what is set here (a port-forward) wins over the tasks' ConfigMap
    local = ("COLDSTART_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI")
    env = {**facts.env, **{k: os.environ[k] for k in local if os.environ.get(k)}}
    output = cfg.output_dir if cfg.output_dir.startswith("s3://") else ""
    root = cluster.pipeline_root or facts.launcher_root or output
    if root.startswith("s3://"):
        results.append(check_bucket(root, env.get("COLDSTART_S3_ENDPOINT_URL")))
    else:
        results.append(Result("SKIP", "bucket", "no s3:// pipeline root or output_dir"))
    results.append(check_mlflow(env.get("MLFLOW_TRACKING_URI")))
    return results


def cmd_doctor(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.config, args.overrides)
    results = run_checks(cfg, args.host, args.namespace or "kubeflow")
    for result in results:
        print(result.line(), flush=True)
    return 1 if any(r.status == "FAIL" for r in results) else 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`doctor`; `common` carries --config, --set and --verbose."""
    from coldstart.pipelines.compile import add_image_tag_arg

    parser = sub.add_parser(
        "doctor", parents=[common], help="pre-flight check of a cluster for a run of this config"
    )
    add_image_tag_arg(parser)
    parser.add_argument(
        "--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"), help="KFP API server URL"
    )
    parser.add_argument(
        "--namespace", default=None, help="namespace of the pipeline's pods (default: kubeflow)"
    )
    parser.set_defaults(func=cmd_doctor)
