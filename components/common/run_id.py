"""Which pipeline run a stage belongs to: the key of its MLflow runs and of every per-run state.

The one place a run id is resolved. On the cluster the DAG passes an empty id and the pod reads
`KFP_RUN_ID` (set from the pod's `pipeline/runid` label, see pipelines/resources.py): an input
that changed on every submit would defeat KFP's cache. kfp.local (pipelines/local.py sets
`KFP_RUN_ID` for each run) and the shell (`--run-id`, default `new_run_id()`) give it explicitly.

Every stage entry (component body or CLI) passes what it was given through `require_run_id`
before it touches storage, and every path that holds per-run state (checkpoints, eval progress)
is built by `run_path` from that resolved id: an empty id made every run that shares an
`output_dir` share `<output_dir>//sft/checkpoints` (issue 15) and `<output_dir>/eval/progress`
(issue 26), so `run_path` refuses one.
"""

from __future__ import annotations

import os
import secrets
import time

from coldstart.common import storage
from coldstart.common.errors import InputError


def new_run_id() -> str:
    """A fresh id for a run started here: `local-<time>-<random>` (two runs in one second differ)."""
    return time.strftime("local-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def require_run_id(given: str | None) -> str:
    """The given id, else `KFP_RUN_ID`; an error when neither is set (never a fresh one).

    A stage must know its run: a retried pod of the same run resumes from that run's state, and a
    fresh id would silently start over (or two stages of one run would not find each other).
    """
    run_id = (given or os.environ.get("KFP_RUN_ID") or "").strip()
    if not run_id:
        raise InputError(
            "no pipeline run id: the stage got pipeline_run_id='' and KFP_RUN_ID is not set; pass "
            "--run-id (shell), pipeline_run_id (component), or set KFP_RUN_ID (pipelines/local.py "
            "and the cluster's pod label do)"
        )
    return _checked(run_id)


def _checked(run_id: str) -> str:
    if "/" in run_id or run_id in (".", ".."):
        raise InputError(f"run id {run_id!r}: must not contain '/' (it names a folder)")
    return run_id


def run_path(root: str | os.PathLike[str], run_id: str, *parts: str) -> str:
    """`<root>/<run id>/<parts...>` (a local folder or an s3:// prefix): the home of one run's state.

    Takes only a resolved id: an empty one is a bug of the caller (it skipped `require_run_id`),
    and a path without the run would be shared by every run of that root.
    """
    if not run_id or run_id != run_id.strip():
        raise ValueError(f"run_path needs a resolved run id (require_run_id), got {run_id!r}")
    return storage.join(root, _checked(run_id), *parts)
