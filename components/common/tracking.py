"""MLflow tracking: one parent run per pipeline run, one nested run per stage, never blocking training.

Stages run in separate processes (pods on the cluster, subprocesses under kfp.local), so the
parent run is found by a tag carrying the kfp pipeline job id, and created by whichever stage
gets there first. With no tracking server configured, runs go to a sqlite store inside the
run's output folder, so a laptop run needs no server.

A stage logs through a :class:`StageTracker`. Its calls only append to an in-memory buffer;
a background thread sends the buffer to MLflow (metrics coalesced into batches). When the
server is down or slow:

- a log call still returns at once (measured in microseconds): training goes on;
- one warning is logged per outage, naming the tracking URI; the thread retries with
  backoff (0.5 s doubling to 5 s) and sends everything, in order, when the server is back;
- if the server is down when the stage starts, the stage waits at most
  ``tracking.start_timeout_s`` and goes on; its runs are created when the server answers,
  with the stage's real start time;
- at the end of the stage the tracker waits up to ``tracking.flush_timeout_s`` of outage for
  the buffer to drain, then spills what is left (with copies of pending artifact files) to
  ``<output_dir>/mlflow/pending/`` (local or ``s3://``). The next stage that reaches the
  server replays spills, as does ``coldstart runs sync``. Nothing is dropped except calls
  the server rejects as invalid (e.g. changing a param's value), which are logged as errors.

MLflow's own HTTP retries would otherwise hold the sending thread for minutes per call
(7 retries with exponential backoff, 120 s timeout); unless set by the user,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are lowered to 0 and
10 s in processes that track, since the tracker retries on its own (and MLflow's printing of
run URLs at every run end is turned off: the tracker logs the stage run's URL once).

System metrics (``system/cpu_utilization_percentage``, memory, disk, network, GPU when
``pynvml`` is present) come from MLflow's own monitors, sampled by the tracker's thread
rather than ``mlflow.start_run(log_system_metrics=True)``: MLflow's sampler stops for good
at the first failed request, and needs an active fluent run. Names are MLflow's, so the UI's
"System metrics" tab shows them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.common import storage
from components.common.config import PipelineConfig, flatten
from components.common.run_id import resolve_run_id

log = logging.getLogger(__name__)

TAG_PIPELINE_RUN = "coldstart.pipeline_run_id"
TAG_ROLE = "coldstart.role"
TAG_STAGE = "coldstart.stage"
TAG_CONFIG_HASH = "coldstart.config_hash"
TAG_ATTEMPT = "coldstart.stage_attempt"
TAG_REGISTERED = "coldstart.registered_model"
TAG_PARENT = "mlflow.parentRunId"
CONFIG_ARTIFACT = "config.yaml"

HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # one extra request per ended run; we log the URL once
}
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
SMALL_FILE_BYTES = 16 * 1024 * 1024  # files up to this size are copied when logged
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 5.0
SPILL_VERSION = 1


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- where runs go


def local_store_dir(cfg: PipelineConfig) -> Path:
    """Where the no-server default keeps its sqlite db and artifacts."""
    base = cfg.output_dir if not cfg.output_dir.startswith("s3://") else "outputs"
    return Path(base).resolve() / "mlflow"


def local_tracking_uri(output_dir: str | Path) -> str:
    """The sqlite store `coldstart run` uses when no server is configured."""
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow' / 'mlflow.db'}"


def resolve_tracking_uri(cfg: PipelineConfig) -> str:
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = local_store_dir(cfg)
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def spill_root(cfg: PipelineConfig) -> str:
    """Where a stage leaves the logs an unreachable server did not take (local or s3://)."""
    if storage.is_s3(cfg.output_dir):
        return storage.join(cfg.output_dir, "mlflow", "pending")
    return str(local_store_dir(cfg) / "pending")


def limit_client_retries() -> None:
    """Lower MLflow's HTTP retries/timeout (unless the user set them): the tracker retries itself."""
    for name, value in HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


# --------------------------------------------------------------------------- run identity


@dataclass
class RunSpec:
    """What identifies a stage's runs; plain data, so a spilled buffer can be replayed elsewhere."""

    tracking_uri: str
    experiment: str
    pipeline_run_id: str
    stage: str
    config_hash: str
    parent_name: str
    artifact_location: str | None = None
    attempt: str = field(default_factory=lambda: uuid.uuid4().hex)
    start_ms: int = field(default_factory=_now_ms)
    experiment_id: str | None = None
    parent_id: str | None = None
    stage_id: str | None = None

    @classmethod
    def for_stage(cls, cfg: PipelineConfig, stage: str, pipeline_run_id: str) -> RunSpec:
        uri = resolve_tracking_uri(cfg)
        # A sqlite store would default artifacts to ./mlruns of whatever cwd a component has.
        location = (
            (local_store_dir(cfg) / "artifacts").as_uri() if uri.startswith("sqlite:") else None
        )
        return cls(
            tracking_uri=uri,
            experiment=cfg.tracking.experiment,
            pipeline_run_id=pipeline_run_id,
            stage=stage,
            config_hash=cfg.digest(),
            parent_name=cfg.tracking.run_name or pipeline_run_id,
            artifact_location=location,
        )


def run_url(spec: RunSpec) -> str | None:
    """The stage run's page in the MLflow UI, for a tracking server."""
    if not spec.tracking_uri.startswith(("http://", "https://")) or spec.stage_id is None:
        return None
    return (
        f"{spec.tracking_uri.rstrip('/')}/#/experiments/{spec.experiment_id}/runs/{spec.stage_id}"
    )


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:  # another stage created it a moment ago
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise MlflowException(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore`) "
            "or set tracking.experiment to another name"
        )
    return experiment.experiment_id


def find_or_create_parent(client: MlflowClient, spec: RunSpec) -> tuple[str, bool]:
    """The pipeline run's parent run (found by its kfp run id tag); True if created now."""
    found = client.search_runs(
        [spec.experiment_id],
        filter_string=f"tags.`{TAG_PIPELINE_RUN}` = '{spec.pipeline_run_id}' and tags.`{TAG_ROLE}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id, False
    run = client.create_run(
        spec.experiment_id,
        start_time=spec.start_ms,
        run_name=spec.parent_name,
        tags={
            TAG_PIPELINE_RUN: spec.pipeline_run_id,
            TAG_ROLE: "pipeline",
            TAG_CONFIG_HASH: spec.config_hash,
        },
    )
    return run.info.run_id, True


def find_or_create_stage(client: MlflowClient, spec: RunSpec) -> str:
    """The stage's nested run; found by its attempt tag if an earlier try created it."""
    found = client.search_runs(
        [spec.experiment_id], filter_string=f"tags.`{TAG_ATTEMPT}` = '{spec.attempt}'"
    )
    if found:
        return found[0].info.run_id
    tags = {
        TAG_PARENT: spec.parent_id,
        TAG_PIPELINE_RUN: spec.pipeline_run_id,
        TAG_ROLE: "stage",
        TAG_STAGE: spec.stage,
        TAG_CONFIG_HASH: spec.config_hash,
        TAG_ATTEMPT: spec.attempt,
    }
    run = client.create_run(
        spec.experiment_id, start_time=spec.start_ms, run_name=spec.stage, tags=tags
    )
    return run.info.run_id


def end_stale_attempts(client: MlflowClient, spec: RunSpec) -> list[str]:
    """End KILLED the runs of this stage still RUNNING from an earlier attempt (a pod that died).

    A retried pod starts the stage again under the same parent; the dead pod's run would
    otherwise stay RUNNING forever and keep the pipeline looking unfinished.
    """
    found = client.search_runs(
        [spec.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{spec.parent_id}' and tags.`{TAG_STAGE}` = '{spec.stage}' "
        "and attributes.status = 'RUNNING'",
    )
    stale = [  # started before this attempt: a replayed old spill must not end the live run
        r.info.run_id
        for r in found
        if r.data.tags.get(TAG_ATTEMPT) != spec.attempt and r.info.start_time < spec.start_ms
    ]
    for run_id in stale:
        client.set_terminated(run_id, "KILLED")
        log.info("MLflow: ended run %s of an earlier %s attempt KILLED", run_id, spec.stage)
    return stale


def _is_permanent(exc: BaseException) -> bool:
    """An error that retrying cannot fix (the server rejected the call, or the file is gone)."""
    if isinstance(exc, FileNotFoundError):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return 400 <= status < 500 and status != 429
    return False


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:300] + "..."


# --------------------------------------------------------------------------- the tracker


class StageTracker:
    """The handle a stage logs through; buffered, so an MLflow outage never stops training.

    ``run_id`` / ``parent_run_id`` are None until the runs exist on the server (they are
    created in the background when the server was down at the stage's start).
    Files given to ``log_artifact`` are read when sent: files up to 16 MiB are copied at call
    time; keep larger files and directories in place until the stage ends.
    """

    def __init__(
        self,
        spec: RunSpec,
        *,
        parent_setup: list[dict] | None = None,
        ops: list[dict] | None = None,
    ) -> None:
        self.spec = spec
        self.registered: dict[str, str] = {}  # model name -> version registered by this tracker
        self._parent_setup = list(
            parent_setup or []
        )  # sent only if this tracker creates the parent
        self._ops: deque[dict] = deque(ops or [])
        self._inflight: list[dict] = []
        self._cond = threading.Condition()
        self._ready = spec.stage_id is not None
        self._closing = self._abandoned = self._closed = False
        self._outage_since: float | None = None
        self._failures = 0
        self._client: MlflowClient | None = None
        self._spool = Path(tempfile.mkdtemp(prefix="coldstart-mlflow-"))
        self._spooled = 0
        self._thread: threading.Thread | None = None
        self._system: _SystemMetrics | None = None
        self.spill_to: str | None = None  # where close() spills when the server stays down

    # ---- the stage's API

    @property
    def run_id(self) -> str | None:
        return self.spec.stage_id

    @property
    def parent_run_id(self) -> str | None:
        return self.spec.parent_id

    def log_params(self, params: dict[str, Any]) -> None:
        self._log_params(params, "stage")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        ts = _now_ms()
        rows = [[k, float(v), ts, int(step or 0)] for k, v in metrics.items()]
        if rows:
            self._enqueue({"kind": "metrics", "target": "stage", "metrics": rows})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._enqueue(
            {"kind": "tags", "target": "stage", "tags": {k: str(v) for k, v in tags.items()}}
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or a directory (its contents go under ``artifact_path``)."""
        self._enqueue(self._artifact_op(Path(path), artifact_path, "stage"))

    def log_figure(self, figure: Any, name: str) -> None:
        """A matplotlib (or plotly) figure saved as ``name`` (e.g. ``plots/reward.png``)."""
        target = self._spool_path(name)
        if hasattr(figure, "savefig"):
            figure.savefig(target, bbox_inches="tight")
        else:
            figure.write_html(str(target))
        self._enqueue_spooled(target, name)

    def log_dict(self, data: dict, name: str) -> None:
        """``name`` ending in .yaml/.yml is written as YAML, anything else as JSON."""
        text = (
            yaml.safe_dump(data, sort_keys=False)
            if name.endswith((".yaml", ".yml"))
            else json.dumps(data, indent=2, default=str)
        )
        self.log_text(text, name)

    def log_text(self, text: str, name: str) -> None:
        target = self._spool_path(name)
        target.write_text(text)
        self._enqueue_spooled(target, name)

    def flush(self, outage_timeout_s: float = 60.0) -> bool:
        """Wait until everything logged so far is on the server; False after that long in an outage."""
        return self._wait_drained(outage_timeout_s)

    # ---- lifecycle

    def start(self, wait_s: float = 10.0, system_metrics_interval_s: float | None = None) -> bool:
        """Start sending; wait up to ``wait_s`` for the runs to exist. False: going on buffered."""
        limit_client_retries()
        self._thread = threading.Thread(
            target=self._work, name=f"mlflow-{self.spec.stage}", daemon=True
        )
        self._thread.start()
        if system_metrics_interval_s:
            self._system = _SystemMetrics(self, system_metrics_interval_s)
            self._system.start()
        deadline = time.monotonic() + wait_s
        with self._cond:
            while not self._ready and self._outage_since is None and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return self._ready

    def close(self, status: str | None = "FINISHED", outage_timeout_s: float = 60.0) -> bool:
        """End the runs with ``status`` (None: no end marks) and drain; spill if the server stays down.

        Returns True when everything reached the server.
        """
        if self._closed:
            return True
        if self._system is not None:
            self._system.stop()
        if status is not None:
            end = _now_ms()
            self._enqueue({"kind": "end", "target": "stage", "status": status, "end_ms": end})
            self._enqueue({"kind": "end", "target": "parent", "status": status, "end_ms": end})
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        drained = self._wait_drained(outage_timeout_s)
        if not drained:
            self._spill()
        with self._cond:
            self._abandoned = self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0 if not drained else 30.0)
        shutil.rmtree(self._spool, ignore_errors=True)
        return drained

    # ---- buffering

    def _log_params(self, params: dict[str, Any], target: str) -> None:
        items = [[str(k), str(v)[:MAX_PARAM_LENGTH]] for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._enqueue(
                {
                    "kind": "params",
                    "target": target,
                    "params": items[start : start + MAX_PARAMS_PER_BATCH],
                }
            )

    def _artifact_op(self, path: Path, artifact_path: str | None, target: str) -> dict:
        path = path.resolve()
        if path.is_file() and path.stat().st_size <= SMALL_FILE_BYTES:
            copy = self._spool_path(path.name)
            shutil.copy2(path, copy)
            path = copy
        elif not path.exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        return {
            "kind": "artifact",
            "target": target,
            "path": str(path),
            "artifact_path": artifact_path,
        }

    def _spool_path(self, name: str) -> Path:
        self._spooled += 1
        target = self._spool / str(self._spooled) / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _enqueue_spooled(self, path: Path, name: str, target: str = "stage") -> None:
        folder = str(Path(name).parent).replace("\\", "/")
        artifact_path = None if folder == "." else folder
        self._enqueue(
            {
                "kind": "artifact",
                "target": target,
                "path": str(path),
                "artifact_path": artifact_path,
            }
        )

    def _enqueue(self, op: dict) -> None:
        with self._cond:
            if self._closed:
                log.error("MLflow: %s logged after the stage's run was closed; dropped", op["kind"])
                return
            last = self._ops[-1] if self._ops else None
            if (
                op["kind"] == "metrics"
                and last is not None
                and last["kind"] == "metrics"
                and last["target"] == op["target"]
                and len(last["metrics"]) + len(op["metrics"]) <= MAX_METRICS_PER_BATCH
            ):
                last["metrics"].extend(op["metrics"])
            else:
                self._ops.append(op)
            self._cond.notify_all()

    def _pending(self) -> int:
        return len(self._ops) + len(self._inflight)

    def _wait_drained(self, outage_timeout_s: float) -> bool:
        began = time.monotonic()
        with self._cond:
            while self._ops or self._inflight or not self._ready:
                if self._thread is None or not self._thread.is_alive():
                    return False
                if self._outage_since is None:
                    self._cond.wait(1.0)
                    continue
                waited = time.monotonic() - max(began, self._outage_since)
                if waited >= outage_timeout_s:
                    return False
                self._cond.wait(outage_timeout_s - waited)
            return True

    # ---- the sending thread

    def _work(self) -> None:
        retry_at = 0.0
        while True:
            with self._cond:
                while True:
                    if self._abandoned:
                        return
                    has_work = bool(self._ops) or not self._ready
                    if not has_work and self._closing:
                        return
                    delay = retry_at - time.monotonic()
                    if has_work and delay <= 0:
                        break
                    self._cond.wait(delay if has_work else None)
            try:
                self._push()
            except Exception as exc:
                if self._ready and _is_permanent(exc):
                    self._drop_inflight(exc)
                    continue
                self._requeue_inflight()
                retry_at = time.monotonic() + self._note_failure(exc)
            else:
                self._note_success()
                retry_at = 0.0

    def _push(self) -> None:
        self._ensure_runs()
        while True:
            with self._cond:
                if not self._ops or self._abandoned:
                    return
                op = self._ops.popleft()
                self._inflight = [op]
            self._send(op)
            with self._cond:
                self._inflight = []
                self._cond.notify_all()

    def _get_client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.spec.tracking_uri)
        return self._client

    def _ensure_runs(self) -> None:
        if self._ready:
            return
        client, spec = self._get_client(), self.spec
        if spec.experiment_id is None:
            spec.experiment_id = ensure_experiment(client, spec.experiment, spec.artifact_location)
        if spec.parent_id is None:
            spec.parent_id, created = find_or_create_parent(client, spec)
            first = (
                self._parent_setup
                if created
                else [{"kind": "status", "target": "parent", "status": "RUNNING"}]
            )
            with self._cond:
                self._ops.extendleft(reversed(first))
        spec.stage_id = find_or_create_stage(client, spec)
        end_stale_attempts(client, spec)
        with self._cond:
            self._ready = True
            self._cond.notify_all()
        where = f"{spec.tracking_uri} (experiment {spec.experiment}, parent {spec.parent_id}, stage {spec.stage_id})"
        log.info("MLflow: %s", run_url(spec) or where)

    def _send(self, op: dict) -> None:
        run_id = self.spec.stage_id if op["target"] == "stage" else self.spec.parent_id
        _SENDERS[op["kind"]](self, self._get_client(), run_id, op)

    def _requeue_inflight(self) -> None:
        with self._cond:
            self._ops.extendleft(reversed(self._inflight))
            self._inflight = []

    def _drop_inflight(self, exc: BaseException) -> None:
        with self._cond:
            dropped, self._inflight = self._inflight, []
            self._cond.notify_all()
        for op in dropped:
            log.error(
                "MLflow rejected %s for the %s run (not retried): %s",
                op["kind"],
                op["target"],
                _short(exc),
            )

    def _note_failure(self, exc: BaseException) -> float:
        with self._cond:
            self._failures += 1
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
            pending = self._pending()
            self._cond.notify_all()
        if first:
            log.warning(
                "MLflow at %s is unreachable (%s). Training goes on: %d pending log calls are buffered and "
                "retried in the background (check MLFLOW_TRACKING_URI and the server).",
                self.spec.tracking_uri,
                _short(exc),
                pending,
            )
        return min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (self._failures - 1))

    def _note_success(self) -> None:
        with self._cond:
            since, self._outage_since, self._failures = self._outage_since, None, 0
            self._cond.notify_all()
        if since is not None:
            log.warning(
                "MLflow at %s is back after %.0f s; buffered logs sent.",
                self.spec.tracking_uri,
                time.monotonic() - since,
            )

    # ---- spill and replay

    def _spill(self) -> None:
        with self._cond:
            ops = self._inflight + list(self._ops)
            setup = [] if self.spec.parent_id else self._parent_setup
        if self.spill_to is None:
            log.error(
                "MLflow at %s stayed unreachable: %d buffered log calls lost",
                self.spec.tracking_uri,
                len(ops),
            )
            return
        base = storage.join(self.spill_to, self.spec.attempt)
        try:
            doc = {
                "version": SPILL_VERSION,
                "spec": asdict(self.spec),
                "ops": [_spill_files(op, base, i) for i, op in enumerate(ops)],
                "parent_setup": [
                    _spill_files(op, base, len(ops) + i) for i, op in enumerate(setup)
                ],
            }
            storage.write_text(base + ".json", json.dumps(doc))  # written last: the spill's marker
        except Exception as exc:
            log.error(
                "MLflow: could not spill %d buffered log calls to %s: %s",
                len(ops),
                base,
                _short(exc),
            )
            return
        log.warning(
            "MLflow at %s stayed unreachable: %d buffered log calls saved to %s.json; the next stage "
            "(or `coldstart runs sync`) sends them once the server is back.",
            self.spec.tracking_uri,
            len(ops),
            base,
        )


def _spill_files(op: dict, base: str, index: int) -> dict:
    """Copy an artifact op's file(s) next to the spill, so it survives the pod."""
    if op["kind"] != "artifact":
        return op
    src = Path(op["path"])
    if not src.exists():
        log.error("MLflow: artifact %s vanished before it could be sent; not spilled", src)
        return {**op, "kind": "lost"}
    rel = f"files/{index}/{src.name}"
    if src.is_dir():
        storage.sync_up(src, storage.join(base, rel))
    else:
        storage.upload_file(src, storage.join(base, rel))
    return {**{k: v for k, v in op.items() if k != "path"}, "spilled": rel}


def _pending_spills(root: str) -> list[str]:
    try:
        listed = storage.list_prefix(root)
    except storage.StorageError as exc:
        log.warning("MLflow: cannot list pending spills under %s: %s", root, exc)
        return []
    prefix = root.rstrip("/") + "/" if storage.is_s3(root) else str(Path(root)) + os.sep
    return [
        u
        for u in listed
        if u.endswith(".json") and "/" not in u[len(prefix) :].replace(os.sep, "/")
    ]


def replay_pending(root: str, outage_timeout_s: float = 30.0) -> tuple[int, int]:
    """Send spilled buffers under ``root`` to their tracking servers; returns (sent, left)."""
    sent = left = 0
    for spill in _pending_spills(root):
        if _replay_one(spill, outage_timeout_s):
            sent += 1
        else:
            left += 1
    return sent, left


def _replay_one(spill: str, outage_timeout_s: float) -> bool:
    doc = json.loads(storage.read_text(spill))
    files = spill[: -len(".json")]
    with tempfile.TemporaryDirectory(prefix="coldstart-replay-") as tmp:
        local = Path(files)
        if storage.is_s3(files):
            local = Path(tmp)
            if storage.exists(storage.join(files, "files")):
                storage.sync_down(files, local)

        def unspill(op: dict) -> dict:
            if "spilled" not in op:
                return op
            return {**op, "path": str(local / op["spilled"])}

        tracker = StageTracker(
            RunSpec(**doc["spec"]),
            ops=[unspill(op) for op in doc["ops"] if op["kind"] != "lost"],
            parent_setup=[unspill(op) for op in doc["parent_setup"]],
        )
        tracker.start(wait_s=0.0)
        done = tracker.close(status=None, outage_timeout_s=outage_timeout_s)
    if done:
        storage.delete(files)
        storage.delete(spill)
        log.info("MLflow: replayed %s (%d log calls)", spill, len(doc["ops"]))
    return done


# --------------------------------------------------------------------------- senders


def _send_metrics(tracker: StageTracker, client: MlflowClient, run_id: str, op: dict) -> None:
    client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]])


def _send_params(tracker: StageTracker, client: MlflowClient, run_id: str, op: dict) -> None:
    client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"]])


def _send_tags(tracker: StageTracker, client: MlflowClient, run_id: str, op: dict) -> None:
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])


def _send_artifact(tracker: StageTracker, client: MlflowClient, run_id: str, op: dict) -> None:
    path = Path(op["path"])
    if path.is_dir():
        client.log_artifacts(run_id, str(path), op["artifact_path"])
    elif path.exists():
        client.log_artifact(run_id, str(path), op["artifact_path"])
    else:
        raise FileNotFoundError(f"artifact {path} no longer exists; keep it until the stage ends")


def _send_status(tracker: StageTracker, client: MlflowClient, run_id: str, op: dict) -> None:
    client.update_run(run_id, status=op["status"])


def _send_end(tracker: StageTracker, client: MlflowClient, run_id: str, op: dict) -> None:
    client.set_terminated(run_id, op["status"], end_time=op["end_ms"])


def _send_register(tracker: StageTracker, client: MlflowClient, run_id: str, op: dict) -> None:
    name = op["name"]
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:  # an earlier try got through but its answer was lost
        version = str(existing[0].version)
    else:
        source = op["source"] or f"{client.get_run(run_id).info.artifact_uri}/{op['artifact_path']}"
        version = str(client.create_model_version(name, source, run_id=run_id).version)
    client.set_tag(run_id, TAG_REGISTERED, f"{name}/{version}")
    tracker.registered[name] = version
    log.info("MLflow: registered %s version %s", name, version)


_SENDERS: dict[str, Callable[[StageTracker, MlflowClient, str, dict], None]] = {
    "metrics": _send_metrics,
    "params": _send_params,
    "tags": _send_tags,
    "artifact": _send_artifact,
    "status": _send_status,
    "end": _send_end,
    "register": _send_register,
}


# --------------------------------------------------------------------------- system metrics


class _SystemMetrics:
    """Samples MLflow's system monitors every ``interval_s`` into the tracker's buffer."""

    def __init__(self, tracker: StageTracker, interval_s: float) -> None:
        self.tracker, self.interval_s = tracker, interval_s
        self.monitors = _system_monitors()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlflow-system-metrics", daemon=True)

    def start(self) -> None:
        if self.monitors:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        step = 0
        while not self._stop.wait(self.interval_s):
            values: dict[str, float] = {}
            try:
                for monitor in self.monitors:
                    monitor.collect_metrics()
                    values.update(monitor.aggregate_metrics())
                    monitor.clear_metrics()
            except Exception as exc:
                log.warning("system metrics stopped: %s", _short(exc))
                return
            self.tracker.log_metrics({f"system/{k}": v for k, v in values.items()}, step=step)
            step += 1


def _system_monitors() -> list[Any]:
    try:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    except ImportError as exc:  # psutil missing
        log.warning("no system metrics: %s", exc)
        return []
    monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception:
        log.debug("no GPU system metrics", exc_info=True)
    return monitors


# --------------------------------------------------------------------------- entry points


def _parent_setup_ops(cfg: PipelineConfig, tracker: StageTracker) -> list[dict]:
    """Flattened config params and the config YAML, sent to the parent run when it is created."""
    ops: list[dict] = []
    items = [[k, str(v)[:MAX_PARAM_LENGTH]] for k, v in flatten(cfg).items()]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        ops.append(
            {
                "kind": "params",
                "target": "parent",
                "params": items[start : start + MAX_PARAMS_PER_BATCH],
            }
        )
    config_file = tracker._spool_path(CONFIG_ARTIFACT)
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    ops.append(
        {"kind": "artifact", "target": "parent", "path": str(config_file), "artifact_path": None}
    )
    return ops


@contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (libraries that log on their own) at the stage's store, during the stage.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI; it is restored afterwards, or a later
    stage_run in this process (and any subprocess) would take this URI over its own config's default.
    """
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets the variable


class StageTerminated(SystemExit):
    """SIGTERM (pod deleted or preempted) during a stage: unwinds it so its run ends KILLED, logs flushed."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into StageTerminated while a stage runs (main thread, default handler only)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise StageTerminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stage_run(cfg: PipelineConfig, stage: str, pipeline_run_id: str) -> Iterator[StageTracker]:
    """The stage's nested run under the pipeline's parent run; ended FAILED on error, KILLED on
    Ctrl-C or SIGTERM (Kubernetes gives a pod 30 s after SIGTERM: the flush then waits at most 20 s).

    Never fails the stage because of MLflow: an unreachable server at start costs at most
    ``tracking.start_timeout_s``, and the runs are created once it answers.
    """
    spec = RunSpec.for_stage(cfg, stage, resolve_run_id(pipeline_run_id))
    tracker = StageTracker(spec)
    tracker._parent_setup = _parent_setup_ops(cfg, tracker)
    tracker.spill_to = spill_root(cfg)
    interval = cfg.tracking.system_metrics_interval_s if cfg.tracking.system_metrics else None
    if tracker.start(cfg.tracking.start_timeout_s, interval):
        replay_pending(tracker.spill_to, outage_timeout_s=min(10.0, cfg.tracking.flush_timeout_s))
    status, timeout = "FAILED", cfg.tracking.flush_timeout_s
    try:
        with _sigterm_unwinds(), _fluent_tracking_uri(spec.tracking_uri):
            yield tracker
        status = "FINISHED"
    except (KeyboardInterrupt, StageTerminated):
        status, timeout = "KILLED", min(timeout, 20.0)
        raise
    finally:
        tracker.close(status, timeout)


def register_model(
    tracker: StageTracker,
    model_dir: str | Path,
    name: str,
    artifact_path: str = "model",
    wait_s: float = 60.0,
) -> str | None:
    """Log ``model_dir`` as the stage run's ``artifact_path`` and register it as a new version of ``name``.

    An ``s3://`` model_dir is already in the object store: it is registered by its URI, not
    copied. Returns the version, or None if the server stayed unreachable for ``wait_s``
    (the registration stays buffered and happens when the server is back).
    """
    source = str(model_dir) if storage.is_s3(str(model_dir)) else None
    if source is None:
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"register_model: {model_dir} is not a directory")
        tracker.log_artifact(model_dir, artifact_path)
    tracker._enqueue(
        {
            "kind": "register",
            "target": "stage",
            "name": name,
            "source": source,
            "artifact_path": artifact_path,
        }
    )
    if not tracker.flush(wait_s):
        log.warning(
            "MLflow: %s not registered yet (server unreachable); it will be when the server is back",
            name,
        )
    return tracker.registered.get(name)
