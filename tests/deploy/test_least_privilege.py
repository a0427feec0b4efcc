"""Least privilege in k8s/: a bucket-scoped S3 user, ingress rules for the services, narrow RBAC.

- The MinIO user of Secret coldstart-s3-credentials (what every task, the KFP launcher and MLflow
  hold) gets bucket-policy.json; the policy is evaluated here by moto's IAM enforcement, which
  speaks the same policy language as MinIO: the bucket works, every other bucket is denied.
- MinIO's root login (coldstart-minio-root) reaches only MinIO and its setup Job.
- MinIO's API and MLflow admit only the namespace's pods (and profile namespaces); the MinIO
  console nobody in the cluster.
- The pipeline's Role names the ConfigMaps and Secrets it reads, and may not modify pods.
"""

from __future__ import annotations

import json

import botocore.exceptions
import pytest

from tests.deploy.manifests import K8S, OVERLAYS, containers, find, needs_kubectl, pod_specs, rel
from tests.deploy.manifests import render as render_overlay
from tests.servers import _boto_client, _set_moto_auth, unique_bucket

MINIO = K8S / "overlays" / "minio-local"
POLICY = json.loads((MINIO / "bucket-policy.json").read_text())
BUCKET = "coldstart"

# Since 5.2.6 moto's IAM enforcement checks an S3 request against the name of its API operation
# (BaseResponse._get_action asks the service router), no longer against the IAM action AWS and
# MinIO check (S3Response._set_action's ListBucket for a listing): ListObjectsV2 wants
# s3:ListObjectsV2. The user gets the policy's grants under those names too, on the same
# resources; bucket-policy.json itself stays what AWS and MinIO read. Harmless on older moto.
MOTO_OPERATION_NAMES = {"s3:ListBucket": ["s3:ListObjectsV2", "s3:ListObjects"]}


def _for_moto(policy: dict) -> dict:
    def actions(st: dict) -> list[str]:
        return st["Action"] + [n for a in st["Action"] for n in MOTO_OPERATION_NAMES.get(a, [])]

    return {**policy, "Statement": [{**st, "Action": actions(st)} for st in policy["Statement"]]}


@pytest.fixture
def bucket_user(s3_iam_server):
    """An IAM user with exactly bucket-policy.json, then enforcement on (as MinIO enforces)."""
    endpoint = s3_iam_server.endpoint_url
    admin = _boto_client("s3", endpoint)
    if BUCKET not in {b["Name"] for b in admin.list_buckets()["Buckets"]}:
        admin.create_bucket(Bucket=BUCKET)
    other = unique_bucket("other")
    admin.create_bucket(Bucket=other)
    admin.put_object(Bucket=other, Key="x", Body=b"not yours")
    iam = _boto_client("iam", endpoint)
    user = unique_bucket("coldstart-user")
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="coldstart-bucket",
        PolicyDocument=json.dumps(_for_moto(POLICY)),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _set_moto_auth(endpoint, "0")
    try:
        yield (
            _boto_client(
                "s3",
                endpoint,
                key=key["AccessKeyId"],
                secret=key["SecretAccessKey"],
            ),
            other,
        )
    finally:
        _set_moto_auth(endpoint, "inf")


def _denied(call, **kwargs) -> bool:
    try:
        call(**kwargs)
    except botocore.exceptions.ClientError as err:
        return err.response["Error"]["Code"] == "AccessDenied"
    return False


def test_the_bucket_policy_allows_the_bucket_and_nothing_else(bucket_user):
    s3, other = bucket_user
    s3.put_object(Bucket=BUCKET, Key="runs/a.txt", Body=b"ok")
    assert s3.get_object(Bucket=BUCKET, Key="runs/a.txt")["Body"].read() == b"ok"
    assert "runs/a.txt" in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    s3.delete_object(Bucket=BUCKET, Key="runs/a.txt")
    assert _denied(s3.get_object, Bucket=other, Key="x")
    assert _denied(s3.put_object, Bucket=other, Key="y", Body=b"")
    assert _denied(s3.list_objects_v2, Bucket=other)
    assert _denied(s3.create_bucket, Bucket=unique_bucket("new"))
    assert _denied(s3.delete_bucket, Bucket=BUCKET)
    assert _denied(s3.list_buckets)


def test_the_policy_names_the_bucket_the_setup_job_creates():
    resources = {r for st in POLICY["Statement"] for r in st["Resource"]}
    assert resources == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}
    assert all(
        a.startswith("s3:") and "*" not in a for st in POLICY["Statement"] for a in st["Action"]
    )


def _secret_users(objs: list[dict], secret: str) -> set[str]:
    users = set()
    for obj in objs:
        for pod in pod_specs(obj):
            for c in containers(pod):
                refs = [e.get("valueFrom", {}).get("secretKeyRef", {}) for e in c.get("env", [])]
                refs += [e.get("secretRef", {}) for e in c.get("envFrom", [])]
                if any(r.get("name") == secret for r in refs):
                    users.add(f"{obj['kind']}/{obj['metadata']['name']}")
    return users


@needs_kubectl
def test_minio_root_login_reaches_only_minio_and_its_setup_job():
    objs = render_overlay(MINIO)
    assert _secret_users(objs, "coldstart-minio-root") == {
        "Deployment/coldstart-minio",
        "Job/coldstart-create-bucket",
    }
    assert "Deployment/coldstart-minio" not in _secret_users(objs, "coldstart-s3-credentials")
    (job,) = find(objs, "Job", "coldstart-create-bucket")
    (generated,) = [
        c for c in find(objs, "ConfigMap") if c["metadata"]["name"] == "coldstart-create-bucket"
    ]
    assert {"setup-minio.sh", "bucket-policy.json"} <= set(generated["data"])
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == BUCKET


def _admits(policy: dict, port: int) -> bool:
    return any(
        any(p.get("port") == port for p in rule.get("ports", [])) or not rule.get("ports")
        for rule in policy["spec"].get("ingress", [])
    )


@needs_kubectl
@pytest.mark.parametrize("path", OVERLAYS, ids=[rel(p) for p in OVERLAYS])
def test_every_service_of_ours_is_behind_an_ingress_policy(path):
    objs = render_overlay(path)
    policies = [p for p in find(objs, "NetworkPolicy") if "Ingress" in p["spec"]["policyTypes"]]
    for svc in find(objs, "Service"):
        selector = svc["spec"]["selector"]
        covering = [
            p
            for p in policies
            if p["spec"]["podSelector"]["matchLabels"].items() <= selector.items()
        ]
        name = svc["metadata"]["name"]
        assert covering, f"{rel(path)}: Service {name} has no ingress NetworkPolicy"
        for port in svc["spec"]["ports"]:
            admitted = any(_admits(p, port["port"]) for p in covering)
            assert admitted == (port.get("name") != "console"), f"{name}:{port['port']}"


def _rules(objs: list[dict]) -> list[dict]:
    return [r for role in find(objs, "Role") for r in role["rules"]]


@needs_kubectl
@pytest.mark.parametrize("path", OVERLAYS, ids=[rel(p) for p in OVERLAYS])
def test_roles_name_what_they_read_and_do_not_modify_pods(path):
    for rule in _rules(render_overlay(path)):
        resources, verbs = set(rule["resources"]), set(rule["verbs"])
        assert "*" not in resources | verbs and "*" not in rule["apiGroups"], rule
        if resources & {"configmaps", "secrets"}:
            assert rule.get("resourceNames"), f"reads every {resources & {'configmaps', 'secrets'}}"
        if "pods" in resources:
            assert verbs <= {"get"}, f"pods: {sorted(verbs)}"
