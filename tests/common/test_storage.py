"""Storage against local paths and a real S3 API (moto_server subprocess from tests/servers.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from coldstart.common import storage
from coldstart.common.storage import StorageError
from tests.servers import MlflowServer, S3Env, S3IamEnv, free_port

MIB = 1024 * 1024


def _make_tree(root: Path) -> dict[str, bytes]:
    """A few files, dated a minute back: S3 keeps times to the second, and sync compares them."""
    files = {
        "config.json": b'{"a": 1}',
        "weights/shard-0.bin": os.urandom(2048),
        "weights/shard-1.bin": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        _backdate(root / rel)
    return files


def _backdate(path: Path, seconds: float = 60.0) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- URIs, local paths


def test_parse_and_join() -> None:
    assert (
        storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x") and not storage.is_s3(Path("s3"))
    )
    assert storage.parse_s3("s3://bucket/a/b.txt") == ("bucket", "a/b.txt")
    assert storage.parse_s3("s3://bucket") == ("bucket", "")
    assert storage.join("s3://b/root/", "ckpt", "/f") == "s3://b/root/ckpt/f"
    assert storage.join("/tmp/root", "ckpt", "f") == "/tmp/root/ckpt/f"
    with pytest.raises(ValueError, match="without a bucket"):
        storage.parse_s3("s3:///key")


def test_local_paths_have_the_same_api(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _make_tree(src)
    storage.write_text(str(tmp_path / "x/y.txt"), "hello")
    assert storage.read_text(str(tmp_path / "x/y.txt")) == "hello"
    assert storage.exists(str(tmp_path / "x")) and not storage.exists(str(tmp_path / "nope"))

    assert sorted(storage.sync_up(src, str(tmp_path / "dst"))) == sorted(files)
    assert storage.sync_up(src, str(tmp_path / "dst")) == []  # unchanged: nothing copied
    assert storage.list_dirs(str(tmp_path / "dst")) == ["weights"]
    assert len(storage.list_prefix(str(tmp_path / "dst"))) == 3
    storage.sync_down(str(tmp_path / "dst"), tmp_path / "back")
    assert _read_tree(tmp_path / "back") == files
    assert storage.materialize(str(src), tmp_path / "cache") == src

    storage.delete(str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()
    with pytest.raises(StorageError, match="nope"):
        storage.read_bytes(str(tmp_path / "nope"))


# --------------------------------------------------------------------------- S3 round trips


def test_s3_objects_round_trip(s3_env: S3Env, tmp_path: Path) -> None:
    storage.write_text(s3_env.uri("dir/a.txt"), "alpha")
    assert storage.read_text(s3_env.uri("dir/a.txt")) == "alpha"

    local = tmp_path / "b.bin"
    local.write_bytes(b"\x00\x01" * 1000)
    storage.upload_file(local, s3_env.uri("dir/sub/b.bin"))
    out = storage.download_file(s3_env.uri("dir/sub/b.bin"), tmp_path / "out/b.bin")
    assert out.read_bytes() == local.read_bytes()

    assert storage.exists(s3_env.uri("dir/a.txt"))
    assert storage.exists(s3_env.uri("dir"))  # a prefix counts
    assert not storage.exists(s3_env.uri("dir/missing.txt"))
    assert not storage.exists(s3_env.uri("di"))  # a partial name is not a directory
    assert storage.list_prefix(s3_env.uri("dir")) == [
        s3_env.uri("dir/a.txt"),
        s3_env.uri("dir/sub/b.bin"),
    ]
    assert storage.list_dirs(s3_env.uri("dir")) == ["sub"]
    assert storage.list_dirs(s3_env.uri()) == ["dir"]

    storage.delete(s3_env.uri("dir"))
    assert storage.list_prefix(s3_env.uri()) == []


def test_s3_multipart_upload_and_download(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLDSTART_S3_MULTIPART_CHUNKSIZE", str(5 * MIB))  # S3's smallest part
    big = tmp_path / "model.safetensors"
    big.write_bytes(os.urandom(11 * MIB))  # 3 parts: 5 + 5 + 1 MiB
    _backdate(big)
    uri = s3_env.uri("models/model.safetensors")

    storage.upload_file(big, uri, multipart_threshold=5 * MIB)
    etag = s3_env.client().head_object(Bucket=s3_env.bucket, Key="models/model.safetensors")["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # really went multipart

    out = storage.download_file(uri, tmp_path / "dl/model.safetensors", multipart_threshold=5 * MIB)
    assert out.read_bytes() == big.read_bytes()
    # Same size, not modified since the upload: a sync skips the file.
    assert storage.sync_up(tmp_path, s3_env.uri("models"), exclude=("dl/model.safetensors",)) == []


def test_s3_sync_skips_unchanged_files(s3_env: S3Env, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "src")
    remote = s3_env.uri("run/model")
    assert sorted(storage.sync_up(tmp_path / "src", remote)) == sorted(files)
    assert storage.sync_up(tmp_path / "src", remote) == []
    (tmp_path / "src/config.json").write_bytes(b'{"a": 2}')  # same size, new content
    assert storage.sync_up(tmp_path / "src", remote) == ["config.json"]

    assert sorted(storage.sync_down(remote, tmp_path / "down")) == sorted(files)
    assert storage.sync_down(remote, tmp_path / "down") == []
    assert _read_tree(tmp_path / "down") == _read_tree(tmp_path / "src")


def test_materialize_prefix_and_object(s3_env: S3Env, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "src")
    storage.sync_up(tmp_path / "src", s3_env.uri("m/tiny"))
    local = storage.materialize(s3_env.uri("m/tiny"), tmp_path / "cache")
    assert local == tmp_path / "cache" / s3_env.bucket / "m/tiny"
    assert _read_tree(local) == files
    single = storage.materialize(s3_env.uri("m/tiny/config.json"), tmp_path / "cache2")
    assert single.read_bytes() == files["config.json"]
    with pytest.raises(StorageError, match="no objects under"):
        storage.materialize(s3_env.uri("m/none"), tmp_path / "cache")


# --------------------------------------------------------------------------- errors


def test_missing_bucket_names_uri_and_bucket(s3_env: S3Env, tmp_path: Path) -> None:
    uri = "s3://no-such-bucket-coldstart/x/y.bin"
    (tmp_path / "f").write_bytes(b"x")
    calls = [
        lambda: storage.read_bytes(uri),
        lambda: storage.write_bytes(uri, b"x"),
        lambda: storage.upload_file(tmp_path / "f", uri),
        lambda: storage.download_file(uri, tmp_path / "g"),
        lambda: storage.exists(uri),
        lambda: storage.list_prefix(uri),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert uri in message and "does not exist" in message and "check the bucket name" in message


def test_missing_key_names_uri(s3_env: S3Env, tmp_path: Path) -> None:
    uri = s3_env.uri("absent.txt")
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.download_file(uri, tmp_path / "x"),
    ):
        with pytest.raises(StorageError, match="no such object: check the key") as info:
            call()
        assert uri in str(info.value)


def test_unknown_credentials_are_rejected(s3_iam_env: S3IamEnv) -> None:
    uri = s3_iam_env.uri("data/a.txt")
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID") as info:
        storage.read_bytes(uri)  # env holds keys the server's IAM does not know
    assert uri in str(info.value) and "InvalidAccessKeyId" in str(info.value)


def test_user_without_permission_gets_access_denied(
    s3_iam_env: S3IamEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_iam_env.user_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_iam_env.user_secret)
    uri = s3_iam_env.uri("data/a.txt")
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.write_text(uri, "x"),
        lambda: storage.exists(uri),
    ):
        with pytest.raises(StorageError, match="access denied") as info:
            call()
        assert uri in str(info.value)


def test_missing_credentials(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv(
        "AWS_EC2_METADATA_DISABLED", "true"
    )  # don't probe the instance metadata service
    with pytest.raises(StorageError, match="no S3 credentials found: set AWS_ACCESS_KEY_ID"):
        storage.read_bytes(s3_env.uri("a"))


def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv(
        "COLDSTART_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}"
    )  # nothing listens
    uri = "s3://bucket/model/config.json"
    start = time.monotonic()
    with pytest.raises(StorageError, match="COLDSTART_S3_ENDPOINT_URL") as info:
        storage.read_bytes(uri)
    elapsed = time.monotonic() - start
    assert uri in str(info.value)
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_bad_setting_in_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDSTART_S3_ADDRESSING_STYLE", "sideways")
    with pytest.raises(StorageError, match="COLDSTART_S3_ADDRESSING_STYLE='sideways'"):
        storage.read_bytes("s3://bucket/key")


# --------------------------------------------------------------------------- MLflow server (smoke)


def test_mlflow_server_accepts_a_run(
    mlflow_server: MlflowServer, s3_env: S3Env, tmp_path: Path
) -> None:
    """The server starts, records a run, and proxies its artifacts into S3."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    exp = client.create_experiment(f"smoke-{s3_env.bucket}")
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "lr", "1e-5")
    client.log_metric(run.info.run_id, "sft/train/loss", 1.5, step=1)
    (tmp_path / "table.txt").write_text("ok")
    client.log_artifact(run.info.run_id, str(tmp_path / "table.txt"))
    client.set_terminated(run.info.run_id)

    got = client.get_run(run.info.run_id)
    assert got.data.params == {"lr": "1e-5"} and got.data.metrics == {"sft/train/loss": 1.5}
    stored = storage.list_prefix(mlflow_server.artifacts_uri)
    assert any(uri.endswith(f"{run.info.run_id}/artifacts/table.txt") for uri in stored), stored
