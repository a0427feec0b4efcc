"""Real servers for tests: an S3 API (moto_server) and an MLflow tracking server.

Registered as a pytest plugin from ``tests/conftest.py`` (``pytest_plugins = ["tests.servers"]``).
The servers run as subprocesses on 127.0.0.1 with free ports, so the code under test talks
HTTP to them exactly as it talks to MinIO / MLflow in the cluster (no in-process mocks).
Each is stopped by its own process id (its process group, which holds its workers).

Fixtures:
- ``s3_server`` (session): a moto S3 server; ``.endpoint_url``.
- ``s3_env`` (function): env vars pointing boto3 and ``coldstart.common.storage`` at it,
  test credentials, and a fresh bucket: ``.bucket``, ``.uri(key)``.
- ``s3_iam_env`` (function): a second moto server that *enforces* IAM credentials, with a
  bucket and a user that has no permissions, for "access denied" tests.
- ``mlflow_server`` (session): ``mlflow server`` with a sqlite backend and artifacts proxied
  to a bucket on ``s3_server``; ``.url``, ``.stop()``, ``.start()`` (same port and backend).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that would let a developer's own AWS setup leak into the tests.
_AWS_LEAKS = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers with an HTTP status below 500; TimeoutError otherwise.

    With ``proc``, fail at once if that process exited (a server that crashed at start-up
    should not cost the whole timeout).
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server for {url} exited with code {proc.returncode} before answering"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return
            last = err
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            last = err
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s (last error: {last})")


@dataclass
class ServerProcess:
    """A server subprocess that can be stopped and started again with the same command.

    Started in its own session, so ``stop`` can signal its process group (the server and
    any workers it forked) by the id of the process we started, and nothing else.
    """

    name: str
    cmd: list[str]
    env: dict[str, str]
    health_url: str
    log_path: Path
    start_timeout: float = 30.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            wait_http(self.health_url, self.start_timeout, self.proc)
        except (TimeoutError, RuntimeError) as err:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{self.name} did not start: {err}\n--- {self.log_path} ---\n{tail}"
            ) from err

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL it if it has not exited after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone: nothing left to stop
        os.killpg(pgid, sig)


def _moto_process(
    port: int, log_dir: Path, extra_env: dict[str, str] | None = None
) -> ServerProcess:
    env = {**os.environ, **TEST_CREDENTIALS, **(extra_env or {})}
    return ServerProcess(
        name=f"moto_server:{port}",
        cmd=[sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        health_url=f"http://127.0.0.1:{port}/moto-api/",
        log_path=log_dir / f"moto-{port}.log",
    )


def _boto_client(service: str, endpoint_url: str, **credentials: str) -> Any:
    """A boto3 client for fixture set-up, independent of the code under test."""
    import boto3

    creds = {
        "aws_access_key_id": credentials.get("key", TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"]),
        "aws_secret_access_key": credentials.get(
            "secret", TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
        ),
    }
    return boto3.session.Session().client(
        service, endpoint_url=endpoint_url, region_name="us-east-1", **creds
    )


def unique_bucket(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- S3


@dataclass
class S3Server:
    endpoint_url: str
    process: ServerProcess


@dataclass
class S3Env:
    """The S3 a test talks to: endpoint, bucket, and URIs in that bucket."""

    endpoint_url: str
    bucket: str

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def client(self) -> Any:
        return _boto_client("s3", self.endpoint_url)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server for the whole session (starts in ~1 s)."""
    port = free_port()
    process = _moto_process(port, tmp_path_factory.mktemp("moto"))
    process.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}", process=process)
    finally:
        process.stop()


def set_s3_env(
    monkeypatch: pytest.MonkeyPatch, endpoint_url: str, tmp_home: Path | None = None
) -> None:
    """Point boto3 and our storage module at ``endpoint_url`` with test credentials."""
    for name in _AWS_LEAKS:
        monkeypatch.delenv(name, raising=False)
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint_url)
    monkeypatch.setenv("COLDSTART_S3_ENDPOINT_URL", endpoint_url)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint_url)
    if tmp_home is not None:  # no ~/.aws/config or credentials from the developer's machine
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_home / "aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_home / "aws-credentials"))


@pytest.fixture
def s3_env(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> S3Env:
    """Test env vars for ``s3_server`` and a fresh, empty bucket of a unique name."""
    set_s3_env(monkeypatch, s3_server.endpoint_url, tmp_path_factory.getbasetemp())
    bucket = unique_bucket()
    _boto_client("s3", s3_server.endpoint_url).create_bucket(Bucket=bucket)
    return S3Env(endpoint_url=s3_server.endpoint_url, bucket=bucket)


@dataclass
class S3IamEnv(S3Env):
    """An S3 that checks credentials: ``user_key``/``user_secret`` are valid but have no rights."""

    user_key: str = ""
    user_secret: str = ""


@pytest.fixture(scope="session")
def s3_iam_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A separate moto server for IAM tests: turning enforcement on there can't disturb others."""
    port = free_port()
    process = _moto_process(port, tmp_path_factory.mktemp("moto-iam"))
    process.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}", process=process)
    finally:
        process.stop()


@pytest.fixture
def s3_iam_env(
    s3_iam_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[S3IamEnv]:
    """A bucket with one object and a permission-less IAM user, then IAM enforcement on.

    moto accepts any credentials unless told otherwise; its ``/moto-api/reset-auth``
    (the server side of ``INITIAL_NO_AUTH_ACTION_COUNT``) makes it check every request
    against its IAM: unknown keys get InvalidAccessKeyId, a user without a policy AccessDenied.
    The env still holds the "testing" keys, which IAM does not know.
    """
    endpoint = s3_iam_server.endpoint_url
    set_s3_env(monkeypatch, endpoint, tmp_path_factory.getbasetemp())
    bucket = unique_bucket("iam")
    s3 = _boto_client("s3", endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="data/a.txt", Body=b"secret")
    iam = _boto_client("iam", endpoint)
    user = unique_bucket("user")
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _set_moto_auth(endpoint, "0")
    try:
        yield S3IamEnv(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        _set_moto_auth(endpoint, "inf")


def _set_moto_auth(endpoint_url: str, initial_no_auth_action_count: str) -> None:
    req = urllib.request.Request(
        f"{endpoint_url}/moto-api/reset-auth",
        data=initial_no_auth_action_count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},  # a form content type would make Flask eat the body
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


# --------------------------------------------------------------------------- MLflow


@dataclass
class MlflowServer:
    """A running ``mlflow server``; ``stop()``/``start()`` keep its port, database and bucket."""

    url: str
    artifacts_uri: str
    backend_store_uri: str
    process: ServerProcess

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        self.process.start()


def _mlflow_command(port: int, backend_store_uri: str, artifacts_uri: str) -> list[str]:
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    prefix = [exe] if exe else [sys.executable, "-m", "mlflow"]
    return [
        *prefix, "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts_uri,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def mlflow_server(
    s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """An MLflow server (sqlite backend, artifacts proxied to moto S3); ~10-15 s to start."""
    workdir = tmp_path_factory.mktemp("mlflow")
    bucket = unique_bucket("mlflow")
    _boto_client("s3", s3_server.endpoint_url).create_bucket(Bucket=bucket)
    port = free_port()
    backend = f"sqlite:///{workdir / 'mlflow.db'}"
    artifacts = f"s3://{bucket}/mlflow"
    env = {
        **os.environ,
        **TEST_CREDENTIALS,
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
        # no job runner (seven huey worker processes): tests use none of its jobs
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    for name in _AWS_LEAKS:
        env.pop(name, None)
    process = ServerProcess(
        name=f"mlflow:{port}",
        cmd=_mlflow_command(port, backend, artifacts),
        env=env,
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=workdir / "server.log",
        start_timeout=180.0,  # ~10-15 s on an idle machine; minutes when 2 cores are shared
    )
    process.start()
    try:
        yield MlflowServer(f"http://127.0.0.1:{port}", artifacts, backend, process)
    finally:
        process.stop()
