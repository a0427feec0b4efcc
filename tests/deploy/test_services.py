"""The programs k8s/ starts, run here as the manifests configure them (no cluster needed):

- the MLflow tracking server with the command, arguments and environment of the rendered
  coldstart-mlflow Deployment: it answers the Service's host names, rejects foreign Host headers
  and proxies artifacts to the S3 store. Postgres cannot run here: the backend URI becomes sqlite
  and the S3 endpoint the test's moto server; everything else comes from the manifest.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import K8S, find, needs_kubectl, render
from tests.servers import TEST_CREDENTIALS, ServerProcess, _boto_client, free_port, unique_bucket

MINIO = K8S / "overlays" / "minio-local"


def _container_env(objs: list[dict], container: dict, secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet would set it (ConfigMaps from the build)."""
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in find(objs, "ConfigMap")}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        src = item.get("valueFrom")
        if src is None:  # $(VAR) expands variables defined earlier in the list
            env[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"]
            )
        elif "secretKeyRef" in src:
            env[item["name"]] = secrets[src["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            value = config_maps.get(ref["name"], {}).get(ref["key"])
            if value is None:
                assert ref.get("optional"), f"{item['name']}: {ref} missing"
                continue
            env[item["name"]] = value
    return env


def _request(
    port: int,
    host: str,
    method: str = "GET",
    path: str = "/api/2.0/mlflow/experiments/search?max_results=1",
):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@needs_kubectl
@pytest.mark.slow
def test_mlflow_server_as_deployed(s3_server, tmp_path):
    objs = render(MINIO)
    (deploy,) = find(objs, "Deployment", "coldstart-mlflow")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    secrets = {**TEST_CREDENTIALS, "POSTGRES_USER": "mlflow", "POSTGRES_PASSWORD": "hex0123"}
    env = _container_env(objs, container, secrets)
    assert (
        env["MLFLOW_BACKEND_STORE_URI"]
        == "postgresql://mlflow:hex0123@coldstart-postgres:5432/mlflow"
    )

    # What cannot be the same here: the database and the S3 endpoint (MinIO's Service name).
    bucket = unique_bucket("coldstart")
    _boto_client("s3", s3_server.endpoint_url).create_bucket(Bucket=bucket)
    destination = re.sub(r"^s3://[^/]+", f"s3://{bucket}", env["MLFLOW_ARTIFACTS_DESTINATION"])
    env |= {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "MLFLOW_ARTIFACTS_DESTINATION": destination,
    }
    port = free_port()
    # Local address and a free port; one worker (CI has two cores; the worker count is not under test).
    local = {
        "--host=0.0.0.0": "--host=127.0.0.1",
        "--port=5000": f"--port={port}",
        "--workers=2": "--workers=1",
    }
    args = [local.get(a, a) for a in container["args"]]
    assert set(local) <= set(container["args"]), container["args"]
    exe = Path(sys.executable).parent / container["command"][0]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    server = ServerProcess(
        name="mlflow (manifest)",
        cmd=[str(exe), *container["command"][1:], *args],
        env={**base, **env},
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp_path / "mlflow.log",
        start_timeout=90.0,
    )
    server.start()
    try:
        for host in (
            "coldstart-mlflow:5000",
            "coldstart-mlflow.kubeflow.svc.cluster.local:5000",
            "localhost:5000",
        ):
            status, body = _request(port, host)
            assert status == 200, f"Host {host}: {status} {body[:200]!r}"
        status, _ = _request(port, "attacker.example:5000")
        assert status == 403, "foreign Host headers are refused (DNS rebinding)"

        # A client with no S3 credentials logs an artifact: the server stores it in the bucket.
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment("deploy-test"))
        client.log_text(run.info.run_id, "hello", "notes/hello.txt")
        keys = [
            o["Key"]
            for o in _boto_client("s3", s3_server.endpoint_url).list_objects_v2(Bucket=bucket)[
                "Contents"
            ]
        ]
        assert any(k.startswith("mlflow/") and k.endswith("notes/hello.txt") for k in keys), keys
    finally:
        server.stop(timeout=3)
