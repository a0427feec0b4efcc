"""Checkpoint publishing and discovery on a local root and on a real S3 API (moto_server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coldstart.common import checkpoints, storage
from coldstart.common.checkpoints import MARKER
from tests.servers import S3Env

REPO_ROOT = Path(__file__).resolve().parents[2]


def _local_ckpt(base: Path, step: int, shards: int = 2, shard_bytes: int = 1024) -> Path:
    ckpt = base / checkpoints.checkpoint_name(step)
    (ckpt / "optimizer").mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    for i in range(shards):
        (ckpt / f"model-{i:05d}.safetensors").write_bytes(os.urandom(shard_bytes))
    (ckpt / "optimizer/state.pt").write_bytes(os.urandom(256))
    return ckpt


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A checkpoint root that outlives the "pod": a directory, or a prefix in a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "remote/run-1")
    s3_env: S3Env = request.getfixturevalue("s3_env")
    return s3_env.uri("runs/run-1")


def test_step_names_parse_as_ints() -> None:
    assert checkpoints.parse_step("checkpoint-10") == 10
    assert checkpoints.parse_step("s3://b/run/checkpoint-7/") == 7
    assert (
        checkpoints.parse_step("checkpoint-x") is None and checkpoints.parse_step("ckpt-1") is None
    )


def test_publish_discover_fetch_prune(root: str, tmp_path: Path) -> None:
    work = tmp_path / "pod"
    for step in (9, 10, 2):
        checkpoints.publish_checkpoint(_local_ckpt(work, step), root)
    assert storage.exists(storage.join(root, "checkpoint-10", MARKER))
    assert checkpoints.latest_complete_checkpoint(root) == storage.join(
        root, "checkpoint-10"
    )  # 10 > 9 > 2

    # A newer checkpoint without its marker (its pod died mid-upload) is ignored.
    storage.upload_file(
        work / "checkpoint-10/trainer_state.json",
        storage.join(root, "checkpoint-11/trainer_state.json"),
    )
    assert checkpoints.latest_complete_checkpoint(root) == storage.join(root, "checkpoint-10")
    with pytest.raises(storage.StorageError, match="no COMPLETE marker"):
        checkpoints.fetch_checkpoint(storage.join(root, "checkpoint-11"), tmp_path / "bad")

    fetched = checkpoints.fetch_checkpoint(
        storage.join(root, "checkpoint-10"), tmp_path / "new-pod/ckpt"
    )
    original = work / "checkpoint-10"
    for path in original.rglob("*"):
        if path.is_file():
            assert (fetched / path.relative_to(original)).read_bytes() == path.read_bytes()

    assert checkpoints.prune_checkpoints(root, keep=2) == [storage.join(root, "checkpoint-2")]
    assert checkpoints.complete_checkpoints(root) == [
        storage.join(root, n) for n in ("checkpoint-9", "checkpoint-10")
    ]
    assert storage.exists(
        storage.join(root, "checkpoint-11")
    )  # incomplete: maybe in progress, left alone
    checkpoints.prune_checkpoints(root, keep=1)
    assert checkpoints.complete_checkpoints(root) == [storage.join(root, "checkpoint-10")]
    with pytest.raises(ValueError, match="newest"):
        checkpoints.prune_checkpoints(root, keep=0)


def test_prune_removes_a_leftover_without_marker_whole(root: str, tmp_path: Path) -> None:
    """A prune killed between deleting a marker and the files leaves a marker-less directory behind;
    the next prune removes it whole, and a marker-less directory newer than every complete one stays."""
    work = tmp_path / "pod"
    for step in (1, 2, 3):
        checkpoints.publish_checkpoint(_local_ckpt(work, step), root)
    storage.delete(storage.join(root, "checkpoint-1", MARKER))  # the kill came right after this
    storage.upload_file(
        work / "checkpoint-3/trainer_state.json",
        storage.join(root, "checkpoint-4/trainer_state.json"),
    )  # a publish under way
    assert checkpoints.prune_checkpoints(root, keep=1) == [
        storage.join(root, "checkpoint-1"),
        storage.join(root, "checkpoint-2"),
    ]
    assert sorted(storage.list_dirs(root)) == ["checkpoint-3", "checkpoint-4"]
    assert not storage.list_prefix(storage.join(root, "checkpoint-1"))


def test_empty_or_missing_root_has_no_checkpoint(root: str) -> None:
    assert checkpoints.latest_complete_checkpoint(root) is None


def test_missing_bucket_is_an_error_not_an_empty_root(s3_env: S3Env) -> None:
    with pytest.raises(storage.StorageError, match="does not exist"):
        checkpoints.latest_complete_checkpoint("s3://no-such-bucket-coldstart/run")


def test_republish_rewrites_marker_last(root: str, tmp_path: Path) -> None:
    ckpt = _local_ckpt(tmp_path / "pod", 5)
    dest = checkpoints.publish_checkpoint(ckpt, root)
    first = storage.read_text(storage.join(dest, MARKER))
    (ckpt / "trainer_state.json").write_text('{"global_step": 6}')  # same size, new content
    time.sleep(0.01)
    checkpoints.publish_checkpoint(ckpt, root)
    assert storage.read_text(storage.join(dest, MARKER)) != first
    assert storage.read_text(storage.join(dest, "trainer_state.json")) == '{"global_step": 6}'


def test_wrongly_named_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "final").mkdir()
    with pytest.raises(ValueError, match="checkpoint-<step>"):
        checkpoints.publish_checkpoint(tmp_path / "final", str(tmp_path / "remote"))


# A publisher that slows down after each file, so the test can kill it between files
# deterministically (the same upload code runs; only the pace changes).
_PUBLISHER = """
import sys, time
from coldstart.common import checkpoints, storage
_upload = storage.upload_file
def _slow_upload(*args, **kwargs):
    _upload(*args, **kwargs)
    time.sleep(0.3)
storage.upload_file = _slow_upload
checkpoints.publish_checkpoint(sys.argv[1], sys.argv[2])
"""


def test_publisher_killed_mid_upload_leaves_no_marker(s3_env: S3Env, tmp_path: Path) -> None:
    root = s3_env.uri("runs/killed")
    checkpoints.publish_checkpoint(_local_ckpt(tmp_path / "pod", 10), root)
    big = _local_ckpt(tmp_path / "pod", 20, shards=8, shard_bytes=1024 * 1024)  # 8 MiB in 10 files

    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _PUBLISHER, str(big), root], cwd=REPO_ROOT, env=env
    )
    try:
        uploaded = _wait_for_objects(
            storage.join(root, "checkpoint-20"), count=2, proc=proc, timeout=60
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    assert proc.returncode == -signal.SIGKILL
    remote_files = storage.list_prefix(storage.join(root, "checkpoint-20"))
    assert len(uploaded) >= 2 and len(remote_files) < 10  # some files made it, not all
    assert not any(uri.endswith(MARKER) for uri in remote_files)
    assert checkpoints.latest_complete_checkpoint(root) == storage.join(root, "checkpoint-10")


def _wait_for_objects(
    uri: str, count: int, proc: subprocess.Popen[bytes], timeout: float
) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = storage.list_prefix(uri)
        if len(found) >= count:
            return found
        assert proc.poll() is None, f"publisher exited early with code {proc.returncode}"
        time.sleep(0.02)
    raise TimeoutError(f"fewer than {count} objects under {uri} after {timeout} s")
