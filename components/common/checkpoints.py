"""Checkpoints that survive the loss of a pod.

A training stage writes ``checkpoint-<step>/`` directories locally and publishes each one to
a root that outlives the pod (an ``s3://`` prefix on the cluster, a directory locally). A
pod can die in the middle of a publish, so a checkpoint counts only once its ``COMPLETE``
marker exists, and the marker is written after every other file. On restart the stage asks
for :func:`latest_complete_checkpoint` and resumes from it; half-uploaded directories are
ignored (and overwritten when the same step is published again).

Layout under a root::

    <root>/checkpoint-100/...files...
    <root>/checkpoint-100/COMPLETE      # JSON: step, files; written last
    <root>/checkpoint-200/...           # no COMPLETE yet: ignored
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from coldstart.common import storage

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
PREFIX = "checkpoint-"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_name(step: int) -> str:
    """The directory name for ``step`` (``checkpoint-<step>``), as HF Trainer names them."""
    return f"{PREFIX}{step}"


def parse_step(name: str) -> int | None:
    """The step of a ``checkpoint-<step>`` name (an int, so 10 sorts after 9), else None."""
    match = _NAME_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def publish_checkpoint(local_ckpt_dir: str | os.PathLike[str], remote_root: str) -> str:
    """Upload ``local_ckpt_dir`` to ``<remote_root>/<dirname>/``, then write its marker.

    Any marker already there is removed first, so re-publishing the same step never leaves a
    mix of old and new files marked complete. Unchanged files are not uploaded again.
    Returns the URI of the published checkpoint.
    """
    src = Path(local_ckpt_dir)
    if parse_step(src.name) is None:
        raise ValueError(
            f"{src}: checkpoint directories must be named '{PREFIX}<step>' to be found again "
            f"by latest_complete_checkpoint"
        )
    dest = storage.join(remote_root, src.name)
    marker = storage.join(dest, MARKER)
    storage.delete(marker)
    uploaded = storage.sync_up(src, dest, exclude=(MARKER,))
    files = sorted(
        p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() and p.name != MARKER
    )
    storage.write_text(
        marker, json.dumps({"step": parse_step(src.name), "files": files, "time": time.time()})
    )
    logger.info("published %s -> %s (%d files uploaded)", src, dest, len(uploaded))
    return dest


def is_complete(checkpoint_uri: str) -> bool:
    """True if the checkpoint's marker exists, i.e. every file was published before it."""
    return storage.exists(storage.join(checkpoint_uri, MARKER))


def complete_checkpoints(root: str) -> list[str]:
    """URIs of the complete checkpoints under ``root``, oldest step first.

    A root that does not exist yet has none; a missing *bucket* raises StorageError (a typo
    must not look like "no checkpoint, start training from scratch").
    """
    steps = sorted(
        (step, name) for name in storage.list_dirs(root) if (step := parse_step(name)) is not None
    )
    found = []
    for _step, name in steps:
        uri = storage.join(root, name)
        if is_complete(uri):
            found.append(uri)
        else:
            logger.info(
                "skipping %s: no %s marker (publish was interrupted or is in progress)", uri, MARKER
            )
    return found


def latest_complete_checkpoint(root: str) -> str | None:
    """The complete checkpoint with the highest step under ``root``, or None if there is none."""
    found = complete_checkpoints(root)
    return found[-1] if found else None


def fetch_checkpoint(uri: str, local_dir: str | os.PathLike[str]) -> Path:
    """Download the complete checkpoint at ``uri`` into ``local_dir`` (its files directly there).

    Refuses an incomplete checkpoint: resuming from half the files would fail later and
    less clearly (or silently load a stale optimizer state).
    """
    if not is_complete(uri):
        raise storage.StorageError(
            f"{uri}: checkpoint has no {MARKER} marker (its upload was interrupted): "
            "use latest_complete_checkpoint() to pick a complete one"
        )
    storage.sync_down(uri, local_dir)
    return Path(local_dir)


def prune_checkpoints(root: str, keep: int) -> list[str]:
    """Delete whole checkpoint directories so that ``keep`` complete ones remain; returns those deleted.

    The newest complete one is never deleted (``keep`` must be at least 1). Also deleted: any
    directory without a marker whose step is below the newest complete checkpoint's. Those are
    leftovers (a prune or publish interrupted by a kill), never a publish in progress: one run
    publishes its steps in increasing order. A directory newer than every complete checkpoint is
    left alone (it may be the publish now under way). Each deletion removes the marker first,
    so an interrupted prune never leaves a partial checkpoint marked complete, and the next prune
    removes what it left.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the newest complete checkpoint must be kept")
    steps = sorted(
        (step, name) for name in storage.list_dirs(root) if (step := parse_step(name)) is not None
    )
    uris = {step: storage.join(root, name) for step, name in steps}
    complete = [step for step in uris if is_complete(uris[step])]
    newest = complete[-1] if complete else None
    doomed_steps = set(complete[:-keep])
    if newest is not None:
        doomed_steps |= {step for step in uris if step < newest and step not in complete}
    doomed = [uris[step] for step in sorted(doomed_steps)]
    for uri in doomed:
        storage.delete(storage.join(uri, MARKER))
        storage.delete(uri)
        logger.info("pruned %s", uri)
    return doomed
