"""`coldstart doctor`: each check against a real counterpart where one runs here (an HTTP server
speaking KFP's healthz, a container registry's token + manifest API and MLflow's /health; moto's
S3), the cluster reads on Node / ConfigMap / Secret objects shaped as the API returns them, and
the whole command with no cluster reachable (those lines say SKIP, and why)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from coldstart.common.config import load_config
from coldstart.pipelines.cli import main
from coldstart.pipelines.doctor import (
    check_bucket,
    check_gpu_nodes,
    check_kfp,
    check_launcher,
    check_mlflow,
    check_secret,
    image_pullable,
    split_image,
)
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict] = {}

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        status, headers, payload = self.routes.get((self.command, path), (404, {}, b""))
        if callable(status):
            status, headers, payload = status(self)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def do_GET(self):
        self._answer(True)

    def do_HEAD(self):
        self._answer(False)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 whose routes a test sets: {(method, path): answer}."""
    port = free_port()
    handler = type("Handler", (_Handler,), {"routes": {}})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}", handler.routes
    finally:
        server.shutdown()
        server.server_close()


def _json(obj) -> tuple:
    return 200, {"Content-Type": "application/json"}, json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("tag", "status"), [("2.5.0", "OK"), ("2.15.1", "OK"), ("2.4.1", "FAIL"), ("", "WARN")]
)
def test_kfp_backend_version_floor(http_server, tag, status):
    host, routes = http_server
    routes[("GET", "/apis/v2beta1/healthz")] = _json({"tag_name": tag, "multi_user": True})
    result = check_kfp(f"http://{host}")
    assert result.status == status, result.line()
    assert status != "OK" or "multi-user" in result.detail


def test_kfp_unreachable_fails():
    assert check_kfp(f"http://127.0.0.1:{free_port()}").status == "FAIL"


def _node(name: str, gpus: int, driver: str | None) -> dict:
    labels = {"kubernetes.io/hostname": name}
    if driver:
        labels["nvidia.com/cuda.driver-version.major"] = driver
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": "64", "nvidia.com/gpu": str(gpus)} if gpus else {"cpu": "8"}}}  # fmt: skip


def test_gpu_nodes_and_driver_floor():
    ok = check_gpu_nodes([_node("cpu-1", 0, None), _node("gpu-1", 8, "580")], need=8)
    assert [r.status for r in ok] == ["OK", "OK"]
    few = check_gpu_nodes([_node("gpu-1", 4, "580")], need=8)
    assert few[0].status == "FAIL" and "needs 8" in few[0].detail
    old = check_gpu_nodes([_node("gpu-1", 8, "570"), _node("gpu-2", 8, "580")], need=8)
    assert old[1].status == "FAIL" and "gpu-1 (570)" in old[1].detail
    unknown = check_gpu_nodes([_node("gpu-1", 8, None)], need=1)
    assert unknown[1].status == "WARN"
    assert check_gpu_nodes([_node("cpu-1", 0, None)], need=1)[0].status == "FAIL"
    assert check_gpu_nodes([], need=0)[0].status == "OK"


def test_launcher_configmap_of_our_overlay_passes_and_a_profile_controller_one_fails():
    from tests.deploy.manifests import K8S, KUBECTL, find, render

    if KUBECTL is None:
        pytest.skip("kubectl not found: cannot render k8s/")
    (ours,) = find(render(K8S / "overlays" / "minio-local"), "ConfigMap", "kfp-launcher")
    assert check_launcher(ours, None).status == "OK"
    # what KFP's multi-user profile controller writes into a profile namespace (sync.py)
    rewritten = {
        "data": {"defaultPipelineRoot": "minio://mlpipeline/private-artifacts/team-a/v2/artifacts"}
    }
    assert check_launcher(rewritten, "s3://coldstart/root").status == "FAIL"
    assert (
        "profile controller"
        in check_launcher({"data": {"defaultPipelineRoot": "s3://coldstart/root"}}, None).detail
    )
    assert check_launcher(None, None).status == "FAIL"


def test_secret_keys_are_checked_by_name_only():
    keys = {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    }
    secret = {"data": {"AWS_ACCESS_KEY_ID": "c2VjcmV0", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"}}
    result = check_secret("coldstart-s3-credentials", secret, keys, required=True)
    assert result.status == "OK" and "c2VjcmV0" not in result.line()
    assert check_secret("s", {"data": {"AWS_ACCESS_KEY_ID": "x"}}, keys, True).status == "FAIL"
    assert check_secret("s", None, keys, required=True).status == "FAIL"
    assert check_secret("m", None, {}, required=False).status == "OK"


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("ghcr.io/coldstart/coldstart-train:abc", ("ghcr.io", "coldstart/coldstart-train", "abc")),
        ("localhost:5000/x/y", ("localhost:5000", "x/y", "latest")),
        ("postgres:17.6", ("registry-1.docker.io", "library/postgres", "17.6")),
        ("quay.io/minio/mc@sha256:00", ("quay.io", "minio/mc", "sha256:00")),
    ],
)
def test_split_image(image, parts):
    assert split_image(image) == parts


def test_image_pullable_through_a_registry_token_challenge(http_server):
    host, routes = http_server

    def manifest(handler):
        if handler.headers.get("Authorization") != "Bearer t0k":
            challenge = f'Bearer realm="http://{host}/token",service="test-registry"'
            return 401, {"WWW-Authenticate": challenge}, b""
        return 200, {"Docker-Content-Digest": "sha256:0"}, b""

    routes[("HEAD", "/v2/coldstart/coldstart-train/manifests/abc")] = (manifest, None, None)
    routes[("GET", "/token")] = _json({"token": "t0k"})
    assert image_pullable(f"{host}/coldstart/coldstart-train:abc") == (True, "manifest found")
    ok, why = image_pullable(f"{host}/coldstart/coldstart-train:missing")
    assert not ok and "404" in why
    ok, why = image_pullable(f"127.0.0.1:{free_port()}/coldstart/coldstart-train:abc")
    assert not ok and "unreachable" in why


def test_bucket_check_against_s3(s3_env):
    assert check_bucket(f"s3://{s3_env.bucket}/root", s3_env.endpoint_url).status == "OK"
    missing = check_bucket("s3://no-such-bucket-0/root", s3_env.endpoint_url)
    assert missing.status == "FAIL" and "no-such-bucket-0" in missing.name


def test_mlflow_health(http_server):
    host, routes = http_server
    routes[("GET", "/health")] = (200, {}, b"OK")
    assert check_mlflow(f"http://{host}").status == "OK"
    assert check_mlflow(f"http://127.0.0.1:{free_port()}").status == "FAIL"
    assert check_mlflow(None).status == "SKIP"


def test_doctor_command_prints_one_line_per_check(
    http_server, s3_env, monkeypatch, capsys, tmp_path
):
    host, routes = http_server
    routes[("GET", "/apis/v2beta1/healthz")] = _json({"tag_name": "2.5.0"})
    routes[("GET", "/health")] = (200, {}, b"OK")
    for kind in ("cpu", "train"):
        routes[("HEAD", f"/v2/team/coldstart-{kind}/manifests/v1")] = (200, {}, b"")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # no cluster from here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{host}")
    monkeypatch.setenv("COLDSTART_S3_ENDPOINT_URL", s3_env.endpoint_url)
    args = ["doctor", "--host", f"http://{host}", "--config", str(CONFIGS / "tiny.yaml"),
            "--set", f"cluster.image_registry={host}/team", "--image-tag", "v1",
            "--set", f"cluster.pipeline_root=s3://{s3_env.bucket}/root"]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["OK", "SKIP", "OK", "OK", "OK", "OK"], lines
    assert lines[1].startswith("SKIP  kubernetes: cannot read the cluster")
    # an image that is not there fails the command
    assert main([*args[:-2], "--image-tag", "v2"]) == 1
    assert "FAIL  image" in capsys.readouterr().out


def test_gpus_needed_comes_from_the_cluster_section():
    from coldstart.pipelines.doctor import gpus_needed

    assert gpus_needed(load_config(CONFIGS / "qwen2.5-vl-7b.yaml")) == 8
    assert gpus_needed(load_config(CONFIGS / "tiny.yaml")) == 0
