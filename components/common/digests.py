"""Identities of the inputs that persisted state is keyed by: a state file proves what made it.

A progress log or a cache entry is reused only when its key matches these digests, so the
digests look at contents, never at names, paths or times: a retrained model written to the same
folder, or a benchmark file replaced in place, gets a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from coldstart.common import storage

CHUNK = 8 << 20
# Files a reader adds to a folder without changing what it holds: datasets' caches of map/filter
# results beside a saved dataset, lock files.
NOT_CONTENT = ("cache-*.arrow", "*.lock")


def json_digest(value: Any) -> str:
    """sha256 of a JSON-able value, keys sorted: the identity of a settings dict."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(uri: str | os.PathLike[str], skip_dirs: Iterable[str] = ()) -> str:
    """sha256 over what is at a local file or folder, or under an s3:// prefix.

    Local: every file's relative path and the sha256 of its bytes (a 15 GB model reads in about
    10 s). s3: every object's relative key, size and ETag (the store's content hash; nothing is
    downloaded). `skip_dirs` names top-level folders that are not part of the thing (a model
    folder's `checkpoints/`); `NOT_CONTENT` files are left out.
    """
    skipped = set(skip_dirs)
    digest = hashlib.sha256()
    if storage.is_s3(uri):
        for obj in storage.list_objects(str(uri)):
            if obj.relpath.split("/", 1)[0] not in skipped:
                digest.update(f"{obj.relpath}\0{obj.size}\0{obj.etag}\n".encode())
        return digest.hexdigest()
    root = Path(uri)
    if root.is_file():
        return file_sha256(root)
    if not root.is_dir():
        raise storage.NotFoundError(f"{root}: no such file or directory: check the path")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] not in skipped and not any(path.match(p) for p in NOT_CONTENT):
            digest.update(f"{rel.as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
