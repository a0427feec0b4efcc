"""Preflight: what can be checked in seconds before any stage starts (`run`, `submit`, `rerun`).

Without it, a typo in a bucket name surfaced 45 s into SFT, after data_prep had run, and a local
run with `output_dir: s3://...` left a folder named `./s3:` behind. Checked here, concurrently,
within `DEADLINE_S`:

- output_dir: a local folder can be created and written; an s3:// prefix takes a small object
  (bucket exists, credentials work) which is then deleted;
- the model (`model.name_or_path`, `data.distill.teacher`): a local directory or s3:// prefix
  that exists, `tiny`, or a hub id when the hub may be used;
- data and benchmark URIs (`data.*_files`, `eval.benchmarks[*].uri`) and rerun inputs exist;
- a rerun's local dataset that holds image keys comes with data_prep's image store (`--images`);
- the tracking server answers (a warning only: stages spill their logs and replay them later).

Every problem found is one clause of one InputError. For `submit` the stages run in the
cluster: local paths are not checked, and an object store this machine cannot reach (an
in-cluster endpoint) is a warning, while a definite answer (no such bucket, access denied) is
still an error.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from coldstart.common import storage
from coldstart.common.config import PipelineConfig
from coldstart.common.errors import InputError

log = logging.getLogger(__name__)

DEADLINE_S = 5.0
PROBE_NAME = ".coldstart-preflight"


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@contextmanager
def quick_s3() -> Iterator[None]:
    """One attempt, short timeouts: an unreachable endpoint answers in ~2 s, not 3 x 3 s."""
    quick = {"COLDSTART_S3_MAX_ATTEMPTS": "1", "COLDSTART_S3_CONNECT_TIMEOUT": "2"}
    quick["COLDSTART_S3_READ_TIMEOUT"] = "3"
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def is_unreachable(exc: BaseException) -> bool:
    """This machine cannot ask the store (no answer, no credentials here), as opposed to a
    definite "no" from it (no such bucket, access denied)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import NoCredentialsError, ReadTimeoutError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (BotoConnectionError, ReadTimeoutError, NoCredentialsError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --------------------------------------------------------------------------- the checks
# Each returns (errors, warnings) for one thing; they run concurrently.

Check = Callable[[], tuple[list[str], list[str]]]


def check_output_dir(uri: str, local: bool) -> tuple[list[str], list[str]]:
    if storage.is_s3(uri):
        probe = storage.join(uri, PROBE_NAME)
        try:
            storage.write_bytes(probe, b"preflight")
            storage.delete(probe)
        except storage.StorageError as exc:
            if not local and is_unreachable(exc):
                return [], [
                    f"output_dir: not reachable from here ({exc}); not checked (the cluster may reach it)"
                ]
            return [f"output_dir: {exc}"], []
        return [], []
    if not local:
        return [], []  # in the pod; submit warns that it is lost with the pod
    path = Path(uri).expanduser().resolve()
    if path.exists() and not path.is_dir():
        return [f"output_dir: {path} is a file, not a folder: choose another output_dir"], []
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        return [f"output_dir: {existing} is not writable: choose another output_dir"], []
    return [], []


def check_uri(field_name: str, uri: str, local: bool) -> tuple[list[str], list[str]]:
    """A data file, benchmark or model that must exist where the stages run."""
    if not storage.is_s3(uri):
        if local and not Path(uri).expanduser().exists():
            return [f"{field_name}: {uri} does not exist (relative to {Path.cwd()})"], []
        return [], []
    try:
        found = storage.exists(uri)
    except storage.StorageError as exc:
        if not local and is_unreachable(exc):
            return [], [f"{field_name}: could not check {uri} from this machine ({exc})"]
        return [f"{field_name}: {exc}"], []
    return ([] if found else [f"{field_name}: nothing at {uri}: check the bucket and key"]), []


def check_image_store(inputs: dict[str, str]) -> tuple[list[str], list[str]]:
    """A local data_prep dataset (image keys) with neither `--images` nor an images/ folder beside
    it would fail in the stage: say so now. Remote datasets are not opened here (the stage says
    the same when it starts)."""
    import datasets

    from coldstart.common.image_store import STORE_FLAG, store_for

    errors = []
    for name, uri in inputs.items():
        path = Path(uri).expanduser()
        if name == STORE_FLAG or storage.is_s3(uri) or not path.is_dir():
            continue
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            continue  # not a saved dataset: the stage names that problem
        split = loaded if isinstance(loaded, datasets.Dataset) else next(iter(loaded.values()))
        try:
            store_for(split, inputs.get(STORE_FLAG), path)
        except InputError as exc:
            errors.append(f"--{name.replace('_', '-')}: {exc}")
    return errors, []


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def check_model(field_name: str, ref: str, local: bool) -> tuple[list[str], list[str]]:
    """The same resolution order as components/common/models.py: tiny, s3://, path, hub id."""
    if not ref or ref == "tiny":
        return [], []
    if storage.is_s3(ref) or Path(ref).expanduser().exists():
        return check_uri(field_name, ref, local)
    if HUB_ID.match(ref):
        if os.environ.get("HF_HUB_OFFLINE") == "1" and local:
            return [
                f"{field_name}={ref!r}: no such directory, and HF_HUB_OFFLINE=1 forbids the hub: "
                "give a model directory or an s3:// prefix"
            ], []
        return [], []  # fetched from the hub when the stage runs
    if not local:
        return [], []  # a path inside the pod (e.g. a mounted model cache)
    return [
        f"{field_name}={ref!r}: no such directory: give a model directory or an s3:// prefix"
    ], []


def check_tracking(uri: str | None) -> tuple[list[str], list[str]]:
    if not uri or not uri.startswith(("http://", "https://")):
        return [], []
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=3).close()
    except urllib.error.HTTPError:
        return [], []  # it answered (auth in front of it, or an older server)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return [], [
            f"tracking server {uri} not reachable ({reason}): stages keep their logs in "
            "<output_dir>/mlflow/pending and `coldstart runs sync` sends them later"
        ]
    return [], []


def checks(cfg: PipelineConfig, local: bool, inputs: dict[str, str]) -> list[Check]:
    found: list[Check] = [
        lambda: check_output_dir(cfg.output_dir, local),
        lambda: check_model("model.name_or_path", cfg.model.name_or_path, local),
        lambda: check_tracking(cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")),
    ]
    if cfg.data.distill.enabled:
        found.append(lambda: check_model("data.distill.teacher", cfg.data.distill.teacher, local))
    uris = {
        f"data.{kind}_files[{i}].uri": source.uri
        for kind in ("sft", "rl", "eval")
        for i, source in enumerate(getattr(cfg.data, f"{kind}_files"))
        if cfg.data.source == "files"
    }
    uris.update(
        {f"eval.benchmarks[{b.name}].uri": b.uri for b in cfg.eval.benchmarks if b.uri}
        if cfg.eval.enabled
        else {}
    )
    uris.update({f"--{name.replace('_', '-')}": uri for name, uri in inputs.items()})
    found += [lambda f=f, u=u: check_uri(f, u, local) for f, u in uris.items()]
    if local and inputs:
        found.append(lambda: check_image_store(inputs))
    return found


def preflight(cfg: PipelineConfig, local: bool, inputs: dict[str, str] | None = None) -> list[str]:
    """Check `cfg` before any stage starts; raise InputError listing every problem.

    `local`: the stages run on this machine (`run`, `rerun --local`); else on a cluster.
    Returns the warnings (also logged).
    """
    findings = Findings()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="preflight")
    with quick_s3():
        futures = [pool.submit(check) for check in checks(cfg, local, inputs or {})]
        done, late = concurrent.futures.wait(futures, timeout=DEADLINE_S)
    pool.shutdown(wait=False, cancel_futures=True)  # a check past the deadline is not waited for
    for future in done:
        errors, warnings = future.result()
        findings.errors += errors
        findings.warnings += warnings
    if late:
        findings.warnings.append(
            f"{len(late)} preflight check(s) did not answer in {DEADLINE_S:.0f} s"
        )
    for warning in findings.warnings:
        log.warning("preflight: %s", warning)
    if findings.errors:
        raise InputError("preflight: " + "; ".join(sorted(findings.errors)))
    return findings.warnings
