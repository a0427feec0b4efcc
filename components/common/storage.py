"""Object storage: one API for local paths and ``s3://`` URIs.

Every stage reads inputs and writes outputs through these functions, so the same code runs on
a laptop (plain paths) and on the cluster (an S3-compatible store: AWS S3, MinIO, Ceph); the
caller never branches on the scheme.

S3 goes through boto3: its transfer manager (``upload_file`` / ``download_file`` with a
``TransferConfig``) does multipart, parallel parts and retries; listing and batch deletes use
boto3's resource collections. boto3 rather than fsspec/s3fs: boto3 is already there (MLflow's
artifact store uses it), s3fs would add aiobotocore and its tight botocore pins, and boto3's
error codes are what the named errors below are made from.

Settings come from the environment (``coldstart.common.settings.S3Settings``):
``COLDSTART_S3_ENDPOINT_URL`` (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), the
``AWS_*`` credentials and region, ``COLDSTART_S3_ADDRESSING_STYLE``, retries, timeouts and
multipart sizes. Every failure of the store becomes a :class:`StorageError` that names the
URI and says what to check.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig

from coldstart.common import settings
from coldstart.common.errors import InputError
from coldstart.common.settings import S3Settings

logger = logging.getLogger(__name__)

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_DENIED_CODES = {
    "403",
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}
_BOTO_ERRORS = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    S3UploadFailedError,
    S3TransferFailedError,
)


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and what to check."""


class NotFoundError(StorageError, InputError):
    """A path or prefix the user named does not exist: bad input (exit 2), not a store failure."""


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True for ``s3://`` URIs; everything else is a local path."""
    return str(uri).startswith("s3://")


def local_cache_dir(output_dir: str) -> Path:
    """Where downloads of a run go: `<output_dir>/cache` for a local output_dir, else the temp dir
    (content that names itself: s3 mirrors by bucket and key, models and sets by digest)."""
    if is_s3(output_dir):
        return Path(tempfile.gettempdir()) / "coldstart-cache"
    return Path(output_dir).resolve() / "cache"


def parse_s3(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/parts`` into ``("bucket", "key/parts")``; the key may be empty."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r} (expected s3://bucket/key)")
    return bucket, key


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or an s3 URI with ``/``, as ``os.path.join`` would."""
    if not is_s3(base):
        return str(Path(base, *parts))
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _dir_key(key: str) -> str:
    """The listing prefix for a "directory" key: ``a/b`` -> ``a/b/``, ``""`` stays ``""``."""
    return key if key == "" or key.endswith("/") else key + "/"


# --------------------------------------------------------------------------- client


def s3_settings() -> S3Settings:
    """The S3 settings in the environment now; a bad value is a StorageError naming the variable."""
    try:
        return settings.read(S3Settings)
    except ValueError as err:
        raise StorageError(str(err)) from err


def s3_client() -> Any:
    """A boto3 S3 client for the current settings (cached per distinct settings and keys)."""
    return _session_for(s3_settings())[0]


def _bucket(name: str) -> Any:
    return _session_for(s3_settings())[1].Bucket(name)


@functools.lru_cache(maxsize=8)
def _session_for(cfg: S3Settings) -> tuple[Any, Any]:
    """(client, resource) for ``cfg``; keys unset in the environment are left to boto3's chain."""
    config = botocore.config.Config(
        region_name=cfg.region,
        retries={"mode": "standard", "max_attempts": cfg.max_attempts},
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        s3={"addressing_style": cfg.addressing_style},
    )
    session = boto3.session.Session(
        aws_access_key_id=_secret(cfg.access_key_id),
        aws_secret_access_key=_secret(cfg.secret_access_key),
        aws_session_token=_secret(cfg.session_token),
    )
    logger.debug("new S3 client: endpoint=%s region=%s", cfg.endpoint_url, cfg.region)
    kwargs = {"endpoint_url": cfg.endpoint_url, "config": config}
    return session.client("s3", **kwargs), session.resource("s3", **kwargs)


def _secret(value: Any) -> str | None:
    return None if value is None else value.get_secret_value()


def transfer_config(multipart_threshold: int | None = None) -> TransferConfig:
    """boto3's multipart settings from the environment; ``multipart_threshold`` overrides."""
    cfg = s3_settings()
    return TransferConfig(
        multipart_threshold=multipart_threshold or cfg.multipart_threshold,
        multipart_chunksize=cfg.multipart_chunksize,
        max_concurrency=4,
    )


# --------------------------------------------------------------------------- errors


def _error_code(err: BaseException) -> str:
    if isinstance(err, botocore.exceptions.ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def _root_cause(err: BaseException) -> BaseException:
    """boto3's transfer errors wrap the error that explains them; dig it out."""
    while isinstance(err, (S3UploadFailedError, S3TransferFailedError)):
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    return err


def _bucket_exists(bucket: str) -> bool:
    """Tell a missing bucket from a missing key after an ambiguous 404."""
    try:
        s3_client().head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as err:
        if _error_code(err) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
    return True


def _explain(err: BaseException, uri: str) -> str:
    """A one-line, actionable message for a boto error on ``uri``."""
    cause = _root_cause(err)
    code = _error_code(cause)
    bucket = parse_s3(uri)[0]
    where = s3_settings().endpoint_url or "AWS"
    if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and not _bucket_exists(bucket)):
        return (
            f"{uri}: bucket {bucket!r} does not exist at {where}: check the bucket name (or create "
            "the bucket) and the endpoint in COLDSTART_S3_ENDPOINT_URL"
        )
    if code in _NOT_FOUND_CODES:
        return f"{uri}: no such object: check the key / path"
    if code in _DENIED_CODES:
        return (
            f"{uri}: access denied ({code}): check the credentials in AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY and that they may access bucket {bucket!r}"
        )
    if isinstance(cause, botocore.exceptions.NoCredentialsError):
        return f"{uri}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(
        cause,
        (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError),
    ):
        return (
            f"{uri}: cannot reach the S3 endpoint ({where}): check COLDSTART_S3_ENDPOINT_URL "
            "(or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) and that the object store is up"
        )
    return f"{uri}: S3 request failed ({type(cause).__name__}: {cause})"


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn boto errors raised inside the block into a :class:`StorageError` naming ``uri``."""
    try:
        yield
    except _BOTO_ERRORS as err:
        try:
            message = _explain(err, uri)
        except _BOTO_ERRORS as probe_err:
            message = (
                f"{uri}: S3 request failed ({err}); probing the bucket also failed ({probe_err})"
            )
        raise StorageError(message) from err


def _require_local(path: Path, uri: str) -> None:
    if not path.exists():
        raise NotFoundError(f"{uri}: no such file or directory: check the path")


# --------------------------------------------------------------------------- single objects


def upload_file(
    local_path: str | os.PathLike[str], uri: str, multipart_threshold: int | None = None
) -> None:
    """Copy one local file to ``uri`` (s3 or local); large files go multipart, from disk."""
    src = Path(local_path)
    _require_local(src, str(src))
    if not is_s3(uri):
        _copy_local(src, Path(uri))
        return
    bucket, key = parse_s3(uri)
    logger.debug("upload %s -> %s", src, uri)
    with _s3_errors(uri):
        s3_client().upload_file(str(src), bucket, key, Config=transfer_config(multipart_threshold))


def download_file(
    uri: str, local_path: str | os.PathLike[str], multipart_threshold: int | None = None
) -> Path:
    """Copy one object (or local file) to ``local_path``, streamed; returns the local path.

    boto3 writes to a temporary name and renames, so an interrupted download never leaves a
    truncated file under the final name.
    """
    dst = Path(local_path)
    if not is_s3(uri):
        _require_local(Path(uri), uri)
        _copy_local(Path(uri), dst)
        return dst
    bucket, key = parse_s3(uri)
    dst.parent.mkdir(parents=True, exist_ok=True)
    logger.debug("download %s -> %s", uri, dst)
    with _s3_errors(uri):
        s3_client().download_file(
            bucket, key, str(dst), Config=transfer_config(multipart_threshold)
        )
    return dst


def _copy_local(src: Path, dst: Path) -> None:
    """Copy via a temporary file and rename, so readers never see a half-written file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() == dst.resolve():
        return
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def read_bytes(uri: str) -> bytes:
    """The whole content of one object or local file (for small files: configs, markers)."""
    if not is_s3(uri):
        _require_local(Path(uri), uri)
        return Path(uri).read_bytes()
    bucket, key = parse_s3(uri)
    with _s3_errors(uri):
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object or local file (atomically for local files: temp file + rename)."""
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        with _s3_errors(uri):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    dst = Path(uri)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, dst)


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def exists(uri: str) -> bool:
    """True if ``uri`` is an object / file, or a non-empty prefix / directory.

    A missing *bucket* raises :class:`StorageError` instead of returning False: a typo in
    the bucket name must not look like "nothing there yet" (e.g. "no checkpoint, start over").
    """
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = parse_s3(uri)
    if key and not key.endswith("/") and _head(uri) is not None:
        return True
    with _s3_errors(uri):
        listing = s3_client().list_objects_v2(Bucket=bucket, Prefix=_dir_key(key), MaxKeys=1)
    return listing.get("KeyCount", 0) > 0


# --------------------------------------------------------------------------- prefixes


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a prefix: its path relative to the prefix, size, last-modified time."""

    relpath: str
    size: int
    mtime: float  # seconds since the epoch, as the store reports it
    etag: str = ""  # the store's content hash (MD5, or of the parts for a multipart upload)


def _iter_objects(uri: str) -> Iterator[ObjectInfo]:
    """All objects under the s3 "directory" ``uri`` (recursively); boto3 paginates."""
    bucket, key = parse_s3(uri)
    prefix = _dir_key(key)
    with _s3_errors(uri):
        for obj in _bucket(bucket).objects.filter(Prefix=prefix):
            yield ObjectInfo(
                obj.key[len(prefix) :], obj.size, obj.last_modified.timestamp(), obj.e_tag
            )


def list_objects(uri: str) -> list[ObjectInfo]:
    """The s3 object at ``uri`` (relpath "") or every object under the "directory" ``uri``, with
    size, time and ETag, by key; a missing one raises."""
    objects = sorted(_iter_objects(uri), key=lambda obj: obj.relpath)
    single = None if objects or uri.endswith("/") else _head(uri)
    if single is not None:
        return [ObjectInfo("", single.size, single.mtime, single.etag)]
    if not objects:
        raise NotFoundError(f"{uri}: no object or prefix there: check the bucket and key")
    return objects


def _iter_local_files(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file())


def list_prefix(uri: str) -> list[str]:
    """Every object (file) under the "directory" ``uri``, recursively, as full URIs, sorted."""
    if not is_s3(uri):
        root = Path(uri)
        return [str(p) for p in _iter_local_files(root)] if root.is_dir() else []
    return sorted(join(uri, obj.relpath) for obj in _iter_objects(uri))


def list_dirs(uri: str) -> list[str]:
    """Names of the immediate sub-"directories" of ``uri`` (S3 common prefixes), sorted."""
    if not is_s3(uri):
        root = Path(uri)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    bucket, key = parse_s3(uri)
    prefix = _dir_key(key)
    pages = s3_client().get_paginator("list_objects_v2")
    with _s3_errors(uri):
        return sorted(
            p["Prefix"][len(prefix) :].rstrip("/")
            for page in pages.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
            for p in page.get("CommonPrefixes", [])
        )


def delete(uri: str) -> None:
    """Delete one object / file, or everything under a prefix / directory. Missing is fine."""
    if not is_s3(uri):
        path = Path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return
    bucket, key = parse_s3(uri)
    with _s3_errors(uri):
        if key and not key.endswith("/"):
            s3_client().delete_object(Bucket=bucket, Key=key)
        # boto3's batch action: DeleteObjects of up to 1000 keys per request.
        for result in _bucket(bucket).objects.filter(Prefix=_dir_key(key)).delete():
            if result.get("Errors"):
                first = result["Errors"][0]
                raise StorageError(
                    f"{uri}: could not delete s3://{bucket}/{first['Key']}: {first['Message']}"
                )


# --------------------------------------------------------------------------- sync


def _upload_needed(local: Path, remote: ObjectInfo | None) -> bool:
    """As ``aws s3 sync``: upload unless same size and the remote copy is not older."""
    if remote is None:
        return True
    stat = local.stat()
    return stat.st_size != remote.size or stat.st_mtime > remote.mtime


def _download_needed(local: Path, remote: ObjectInfo) -> bool:
    """Download unless same size and the local file carries the object's time (set on download)."""
    if not local.is_file():
        return True
    stat = local.stat()
    return stat.st_size != remote.size or abs(stat.st_mtime - remote.mtime) > 1e-3


def _fetch(uri: str, target: Path, remote: ObjectInfo) -> None:
    download_file(uri, target)
    os.utime(target, (remote.mtime, remote.mtime))


def sync_up(
    local_dir: str | os.PathLike[str], uri: str, exclude: tuple[str, ...] = ()
) -> list[str]:
    """Upload the files of ``local_dir`` under ``uri``, skipping unchanged ones.

    Unchanged means same size and not modified since the remote copy was written (the rule of
    ``aws s3 sync``). ``exclude`` lists relative paths not to upload. Remote files absent
    locally are kept. Returns the relative paths uploaded.
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise StorageError(f"{src}: not a directory: check the path to upload")
    if not is_s3(uri):
        return _sync_local(src, Path(uri), exclude)
    remote = {obj.relpath: obj for obj in _iter_objects(uri)}
    uploaded = []
    for path in _iter_local_files(src):
        rel = path.relative_to(src).as_posix()
        if rel not in exclude and _upload_needed(path, remote.get(rel)):
            upload_file(path, join(uri, rel))
            uploaded.append(rel)
    logger.info("sync_up %s -> %s: %d uploaded, %d there", src, uri, len(uploaded), len(remote))
    return uploaded


def sync_down(uri: str, local_dir: str | os.PathLike[str], mirror: bool = False) -> list[str]:
    """Download every object under ``uri`` into ``local_dir``, skipping unchanged files.

    Returns the relative paths downloaded. An empty or missing prefix raises: silently
    materializing an empty directory would surface later as a confusing "model not found".
    With ``mirror``, local files the prefix no longer holds are deleted: a model re-saved with
    other shards, or a parquet folder rewritten with fewer parts, must not be read as a mix.
    """
    dst = Path(local_dir)
    if not is_s3(uri):
        if not Path(uri).is_dir():
            raise NotFoundError(f"{uri}: no such directory: check the path")
        return _sync_local(Path(uri), dst, ())
    objects = list(_iter_objects(uri))
    if not objects:
        raise NotFoundError(f"{uri}: no objects under this prefix: check the bucket and key")
    downloaded = []
    for obj in objects:
        if _download_needed(dst / obj.relpath, obj):
            _fetch(join(uri, obj.relpath), dst / obj.relpath, obj)
            downloaded.append(obj.relpath)
    if mirror:
        _remove_extra(dst, {obj.relpath for obj in objects})
    logger.info("sync_down %s -> %s: %d of %d downloaded", uri, dst, len(downloaded), len(objects))
    return downloaded


def _remove_extra(root: Path, keep: set[str]) -> None:
    for path in _iter_local_files(root):
        if path.relative_to(root).as_posix() not in keep:
            logger.info("%s: gone from the object store; removed from the local copy", path)
            path.unlink()


def _sync_local(src: Path, dst: Path, exclude: tuple[str, ...]) -> list[str]:
    """Local-to-local sync: copy files whose size or mtime (ns) differ; copy2 keeps mtimes."""
    copied = []
    for path in _iter_local_files(src):
        rel = path.relative_to(src).as_posix()
        target = dst / rel
        if rel in exclude:
            continue
        if target.is_file():
            a, b = path.stat(), target.stat()
            if a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns:
                continue
        _copy_local(path, target)
        copied.append(rel)
    return copied


def materialize(uri_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> Path:
    """A local path for ``uri_or_path``: local paths as they are, s3 objects/prefixes downloaded.

    Downloads go to ``<cache_dir>/<bucket>/<key>``, a mirror of the prefix; a second call only
    fetches what changed (and drops what is gone), so stages can call this on every start (e.g.
    after a pod restart).
    """
    uri = str(uri_or_path)
    if not is_s3(uri):
        _require_local(Path(uri), uri)
        return Path(uri)
    bucket, key = parse_s3(uri)
    target = Path(cache_dir, bucket, *[p for p in key.split("/") if p])
    single = _head(uri) if key and not key.endswith("/") else None
    if single is None:
        sync_down(uri, target, mirror=True)
    elif _download_needed(target, single):
        _fetch(uri, target, single)
    return target


def _head(uri: str) -> ObjectInfo | None:
    """The object at ``uri`` if there is one (a prefix is not), else None."""
    bucket, key = parse_s3(uri)
    with _s3_errors(uri):
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as err:
            if _error_code(err) in _NOT_FOUND_CODES and _bucket_exists(bucket):
                return None
            raise
    return ObjectInfo(
        key.rsplit("/", 1)[-1],
        int(head["ContentLength"]),
        head["LastModified"].timestamp(),
        head.get("ETag", ""),
    )
