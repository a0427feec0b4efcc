"""Which pipeline run a stage belongs to: the key of its MLflow runs and of its checkpoints.

On the cluster the DAG passes an empty id and the pod reads `KFP_RUN_ID` (set from the pod's
`pipeline/runid` label, see pipelines/resources.py): an input that changed on every submit
would defeat KFP's cache. kfp.local (pipelines/local.py sets `KFP_RUN_ID` for each run) and
the shell (`--run-id`, default `local-<time>`) give it explicitly.

Checkpoints live under the run id, so the id must never be empty there: an empty one made every
run that shares an `output_dir` resume from the same `<output_dir>//sft/checkpoints`.
"""

from __future__ import annotations

import os
import time

from coldstart.common.errors import InputError


def resolve_run_id(given: str | None) -> str:
    """The given id, else `KFP_RUN_ID`, else a fresh `local-<time>` (a new run each call)."""
    if given:
        return given
    return os.environ.get("KFP_RUN_ID") or time.strftime("local-%Y%m%d-%H%M%S")


def require_run_id(given: str | None) -> str:
    """The given id, else `KFP_RUN_ID`; an error when neither is set (never a fresh one).

    A stage that trains must know its run: a retried pod of the same run resumes from that run's
    checkpoints, and a fresh id would silently start over.
    """
    run_id = (given or os.environ.get("KFP_RUN_ID") or "").strip()
    if not run_id:
        raise InputError(
            "no pipeline run id: the stage got pipeline_run_id='' and KFP_RUN_ID is not set; pass "
            "--run-id (shell), pipeline_run_id (component), or set KFP_RUN_ID (pipelines/local.py "
            "and the cluster's pod label do)"
        )
    if "/" in run_id:
        raise InputError(f"run id {run_id!r}: must not contain '/' (it names a folder)")
    return run_id
