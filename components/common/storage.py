"""Object storage: one API for local paths and ``s3://`` URIs.

Every stage reads inputs and writes outputs through these functions, so the same code
runs on a laptop (plain paths) and on the cluster (an S3-compatible store: AWS S3,
MinIO, Ceph). Local paths get the same semantics as S3 (copies, prefixes, listing) so
the caller never branches on the scheme.

Configuration comes from the environment only (secrets never enter pipeline
parameters):

- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``): credentials,
  read by boto3 itself.
- ``COLDSTART_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``:
  the endpoint of a non-AWS store (MinIO, moto); unset means AWS.
- ``AWS_DEFAULT_REGION`` or ``AWS_REGION``: region (default ``us-east-1``).
- ``COLDSTART_S3_ADDRESSING_STYLE``: ``path`` for MinIO, ``virtual`` or ``auto`` (default).
- ``COLDSTART_S3_MAX_ATTEMPTS`` (default 3), ``COLDSTART_S3_CONNECT_TIMEOUT`` (s, default 3),
  ``COLDSTART_S3_READ_TIMEOUT`` (s, default 60): retries (botocore "standard" mode, with
  exponential backoff) and timeouts. Kept small by default so that a wrong endpoint fails
  in seconds, not minutes.
- ``COLDSTART_S3_MULTIPART_THRESHOLD`` / ``COLDSTART_S3_MULTIPART_CHUNKSIZE`` (bytes,
  default 64 MiB each): files above the threshold are transferred in parallel parts.

Every failure of the store becomes a :class:`StorageError` whose message names the URI
and says what to check.
"""

from __future__ import annotations

import functools
import hashlib
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

from components.common.errors import InputError

logger = logging.getLogger(__name__)

ENDPOINT_ENV_VARS = ("COLDSTART_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CREDENTIAL_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
DEFAULT_REGION = "us-east-1"
MIB = 1024 * 1024
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


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and what to check."""


class NotFoundError(StorageError, InputError):
    """A path or prefix the user named does not exist: bad input (exit 2), not a store failure."""


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True for ``s3://`` URIs; everything else is a local path."""
    return str(uri).startswith("s3://")


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


@dataclass(frozen=True)
class S3Settings:
    """The S3 client settings read from the environment (see the module docstring)."""

    endpoint_url: str | None
    region: str
    addressing_style: str
    max_attempts: int
    connect_timeout: float
    read_timeout: float
    multipart_threshold: int
    multipart_chunksize: int


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as err:
        raise StorageError(f"{name}={raw!r} is not a number") from err


def s3_settings() -> S3Settings:
    """Read the S3 settings from the environment now (the environment may change between calls)."""
    endpoint = next((os.environ[v] for v in ENDPOINT_ENV_VARS if os.environ.get(v)), None)
    style = os.environ.get("COLDSTART_S3_ADDRESSING_STYLE", "auto") or "auto"
    if style not in ("auto", "path", "virtual"):
        raise StorageError(
            f"COLDSTART_S3_ADDRESSING_STYLE={style!r}: expected 'path' (MinIO), 'virtual' or 'auto'"
        )
    return S3Settings(
        endpoint_url=endpoint,
        region=os.environ.get("AWS_DEFAULT_REGION")
        or os.environ.get("AWS_REGION")
        or DEFAULT_REGION,
        addressing_style=style,
        max_attempts=int(_env_number("COLDSTART_S3_MAX_ATTEMPTS", 3)),
        connect_timeout=_env_number("COLDSTART_S3_CONNECT_TIMEOUT", 3.0),
        read_timeout=_env_number("COLDSTART_S3_READ_TIMEOUT", 60.0),
        multipart_threshold=int(_env_number("COLDSTART_S3_MULTIPART_THRESHOLD", 64 * MIB)),
        multipart_chunksize=int(_env_number("COLDSTART_S3_MULTIPART_CHUNKSIZE", 64 * MIB)),
    )


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment (cached per distinct settings).

    Credentials are not part of the cache key: boto3 resolves them from the environment when
    the client is created, so a change of ``AWS_ACCESS_KEY_ID`` needs :func:`reset_clients`.
    """
    return _client_for(s3_settings(), _credentials_fingerprint())


def reset_clients() -> None:
    """Forget cached clients, e.g. after the credentials in the environment changed."""
    _client_for.cache_clear()


def _credentials_fingerprint() -> str:
    """Hash of the credential env vars, so that changed keys get a fresh client (never logged)."""
    raw = "\0".join(os.environ.get(v, "") for v in (*CREDENTIAL_ENV_VARS, "AWS_SESSION_TOKEN"))
    return hashlib.sha256(raw.encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def _client_for(settings: S3Settings, _credentials: str) -> Any:
    config = botocore.config.Config(
        region_name=settings.region,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": settings.addressing_style},
    )
    logger.debug("new S3 client: endpoint=%s region=%s", settings.endpoint_url, settings.region)
    return boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, config=config)


def transfer_config(multipart_threshold: int | None = None) -> TransferConfig:
    """Multipart settings for uploads/downloads; ``multipart_threshold`` overrides the env."""
    settings = s3_settings()
    threshold = settings.multipart_threshold if multipart_threshold is None else multipart_threshold
    chunksize = max(settings.multipart_chunksize, 5 * MIB)  # S3's minimum part size
    return TransferConfig(
        multipart_threshold=threshold,
        multipart_chunksize=chunksize,
        max_concurrency=4,
        use_threads=True,
    )


# --------------------------------------------------------------------------- errors


def _error_code(err: BaseException) -> str:
    if isinstance(err, botocore.exceptions.ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def _root_cause(err: BaseException) -> BaseException:
    """boto3's transfer errors wrap the ClientError that explains them; dig it out."""
    seen = err
    while isinstance(seen, (S3UploadFailedError, S3TransferFailedError)):
        inner = seen.__cause__ or seen.__context__
        if inner is None:
            break
        seen = inner
    return seen


def _bucket_exists(bucket: str) -> bool:
    """Tell a missing bucket from a missing key after an ambiguous HEAD 404."""
    try:
        s3_client().head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as err:
        if _error_code(err) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
    return True


def _endpoint_hint() -> str:
    endpoint = s3_settings().endpoint_url or "AWS default"
    return (
        f"cannot reach the S3 endpoint ({endpoint}): check COLDSTART_S3_ENDPOINT_URL "
        "(or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) and that the object store is up"
    )


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
        return f"{uri}: {_endpoint_hint()}"
    return f"{uri}: S3 request failed ({type(cause).__name__}: {cause})"


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn boto errors raised inside the block into a :class:`StorageError` naming ``uri``."""
    try:
        yield
    except (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        S3UploadFailedError,
        S3TransferFailedError,
    ) as err:
        try:
            message = _explain(err, uri)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as probe_err:
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
    """One object under a prefix: its path relative to the prefix, size and ETag."""

    relpath: str
    size: int
    etag: str


def _iter_objects(uri: str) -> Iterator[ObjectInfo]:
    """All objects under the s3 "directory" ``uri`` (recursively), paginated."""
    bucket, key = parse_s3(uri)
    prefix = _dir_key(key)
    paginator = s3_client().get_paginator("list_objects_v2")
    with _s3_errors(uri):
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    obj["Key"][len(prefix) :], int(obj["Size"]), obj["ETag"].strip('"')
                )


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
    names: list[str] = []
    paginator = s3_client().get_paginator("list_objects_v2")
    with _s3_errors(uri):
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names += [
                p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])
            ]
    return sorted(names)


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
    keys = [key] if key and not key.endswith("/") else []
    keys += [_dir_key(key) + obj.relpath for obj in _iter_objects(uri)]
    client = s3_client()
    with _s3_errors(uri):
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            result = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                first = result["Errors"][0]
                raise StorageError(
                    f"{uri}: could not delete s3://{bucket}/{first['Key']}: {first['Message']}"
                )


# --------------------------------------------------------------------------- sync


def _local_etag(path: Path, size: int, remote_etag: str) -> str:
    """The ETag S3 would give ``path`` if uploaded like the remote object was.

    Single-part ETags are the MD5; multipart ones are ``md5(part md5s)-N``. The part size
    is not stored, so assume ours; a different part size only costs a re-transfer.
    """
    if "-" not in remote_etag:
        return _md5_parts(path, chunksize=max(size, 1))[0].hexdigest()
    chunksize = transfer_config().multipart_chunksize
    digests = _md5_parts(path, chunksize)
    combined = hashlib.md5(b"".join(d.digest() for d in digests), usedforsecurity=False)
    return f"{combined.hexdigest()}-{len(digests)}"


def _md5_parts(path: Path, chunksize: int) -> list[Any]:
    """MD5 of each ``chunksize`` part of the file (one part for an empty file)."""
    digests: list[Any] = []
    with path.open("rb") as f:
        while True:
            part, read = hashlib.md5(usedforsecurity=False), 0
            while read < chunksize:
                block = f.read(min(chunksize - read, 8 * MIB))
                if not block:
                    break
                part.update(block)
                read += len(block)
            if read == 0 and digests:
                break
            digests.append(part)
            if read < chunksize:
                break
    return digests


def _unchanged(local: Path, remote: ObjectInfo | None) -> bool:
    """Same size and same content hash (ETag); any doubt means transfer again."""
    if remote is None or not local.is_file():
        return False
    size = local.stat().st_size
    return size == remote.size and _local_etag(local, size, remote.etag) == remote.etag


def sync_up(
    local_dir: str | os.PathLike[str], uri: str, exclude: tuple[str, ...] = ()
) -> list[str]:
    """Upload the files of ``local_dir`` under ``uri``, skipping unchanged ones.

    ``exclude`` lists relative paths not to upload. Remote files absent locally are kept
    (no deletion). Returns the relative paths uploaded.
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
        if rel in exclude or _unchanged(path, remote.get(rel)):
            continue
        upload_file(path, join(uri, rel))
        uploaded.append(rel)
    logger.info("sync_up %s -> %s: %d uploaded, %d unchanged", src, uri, len(uploaded), len(remote))
    return uploaded


def sync_down(uri: str, local_dir: str | os.PathLike[str]) -> list[str]:
    """Download every object under ``uri`` into ``local_dir``, skipping unchanged files.

    Returns the relative paths downloaded. An empty or missing prefix raises: silently
    materializing an empty directory would surface later as a confusing "model not found".
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
        target = dst / obj.relpath
        if not _unchanged(target, obj):
            download_file(join(uri, obj.relpath), target)
            downloaded.append(obj.relpath)
    logger.info("sync_down %s -> %s: %d of %d downloaded", uri, dst, len(downloaded), len(objects))
    return downloaded


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

    Downloads go to ``<cache_dir>/<bucket>/<key>``; a second call only fetches what changed,
    so stages can call this on every start (e.g. after a pod restart).
    """
    uri = str(uri_or_path)
    if not is_s3(uri):
        _require_local(Path(uri), uri)
        return Path(uri)
    bucket, key = parse_s3(uri)
    target = Path(cache_dir, bucket, *[p for p in key.split("/") if p])
    single = _head(uri) if key and not key.endswith("/") else None
    if single is None:
        sync_down(uri, target)
    elif not _unchanged(target, single):
        download_file(uri, target)
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
    return ObjectInfo(key.rsplit("/", 1)[-1], int(head["ContentLength"]), head["ETag"].strip('"'))
