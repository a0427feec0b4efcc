"""MLflow tracking: one parent run per pipeline run, one nested run per stage, never blocking training.

Stages run in separate processes (pods, or subprocesses under kfp.local), so the parent run is
found by a tag carrying the kfp run id and created by whichever stage gets there first. With no
server configured, runs go to a sqlite store under the run's output folder.

MLflow does the logging: metrics, params and tags go through its asynchronous logging
(``log_batch(..., synchronous=False)``), system metrics through its ``SystemMetricsMonitor``.
What is ours is the outage :class:`Spill`: MLflow's async logging drops a batch the server
does not take, so every call is kept until MLflow confirms it; a background thread probes a
down server with backoff and resends when it is back, sends files (artifacts, the model) so
they never block the stage, and at the end of the stage writes what is left to
``<output_dir>/mlflow/pending/`` for the next stage (or ``coldstart runs sync``) to replay.
The spill holds at most ``tracking.spill_max_entries`` calls. Behaviour: docs/tracking.md.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from coldstart.common import settings, storage
from coldstart.common.config import PipelineConfig, flatten
from coldstart.common.run_id import require_run_id

if TYPE_CHECKING:
    from mlflow.utils.async_logging.run_operations import RunOperations

log = logging.getLogger(__name__)

TAG_PIPELINE_RUN = "coldstart.pipeline_run_id"
TAG_ROLE = "coldstart.role"
TAG_STAGE = "coldstart.stage"
TAG_CONFIG_HASH = "coldstart.config_hash"
TAG_ATTEMPT = "coldstart.stage_attempt"
TAG_REGISTERED = "coldstart.registered_model"
TAG_PARENT = "mlflow.parentRunId"
CONFIG_ARTIFACT = "config.yaml"
MODEL_ARTIFACT = "model"
MODEL_TASK = "image-text-to-text"  # the transformers pipeline task of a VLM

HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # we log the stage run's URL once
}
# With it set, MLflow merges queued batches into one request and, when that request fails,
# reports the merged-in batches as logged (mlflow 3.17: only the merged batch gets the error):
# the spill would drop calls that never arrived.
UNSAFE_ENV = "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
MAX_PARAM_LENGTH = 6000
SMALL_FILE_BYTES = 16 * 1024 * 1024  # files up to this size are copied when logged
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 5.0
SPILL_VERSION = 2
_PARENT_RUNNING = {"kind": "status", "target": "parent", "status": "RUNNING"}  # a later stage
REPO_ROOT = Path(__file__).resolve().parents[2]


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- where runs go


def local_store_dir(cfg: PipelineConfig) -> Path:
    """Where the no-server default keeps its sqlite db and artifacts."""
    base = cfg.output_dir if not storage.is_s3(cfg.output_dir) else "outputs"
    return Path(base).resolve() / "mlflow"


def local_tracking_uri(output_dir: str | Path) -> str:
    """The sqlite store `coldstart run` uses when no server is configured."""
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow' / 'mlflow.db'}"


def resolve_tracking_uri(cfg: PipelineConfig) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite under output_dir."""
    uri = cfg.tracking.tracking_uri or settings.read(settings.TrackingSettings).tracking_uri
    if uri:
        return uri
    store = local_store_dir(cfg)
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def spill_root(cfg: PipelineConfig) -> str:
    """Where a stage leaves the logs an unreachable server did not take (local or s3://)."""
    if storage.is_s3(cfg.output_dir):
        return storage.join(cfg.output_dir, "mlflow", "pending")
    return str(local_store_dir(cfg) / "pending")


def limit_client_retries() -> None:
    """Lower MLflow's HTTP retries/timeout (unless the user set them): the spill retries itself."""
    for name, value in HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if os.environ.pop(UNSAFE_ENV, None):
        log.warning("%s unset: MLflow would report failed merged batches as logged", UNSAFE_ENV)


def source_tags(stage: str) -> dict[str, str]:
    """``mlflow.source.*`` tags: what ran, and the git commit (from the image, else the checkout)."""
    commit = settings.read(settings.TrackingSettings).git_commit
    if commit is None:
        from mlflow.utils.git_utils import get_git_commit

        commit = get_git_commit(str(REPO_ROOT))
    tags = {"mlflow.source.name": f"coldstart/{stage}", "mlflow.source.type": "JOB"}
    return tags | ({"mlflow.source.git.commit": commit} if commit else {})


# --------------------------------------------------------------------------- run identity


@dataclass
class RunSpec:
    """What identifies a stage's runs; plain data, so a spill can be replayed elsewhere."""

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
        filter_string=f"tags.`{TAG_PIPELINE_RUN}` = '{spec.pipeline_run_id}' "
        f"and tags.`{TAG_ROLE}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id, False
    tags = {TAG_PIPELINE_RUN: spec.pipeline_run_id, TAG_ROLE: "pipeline"}
    tags |= {TAG_CONFIG_HASH: spec.config_hash, **source_tags("pipeline")}
    run = client.create_run(
        spec.experiment_id, start_time=spec.start_ms, run_name=spec.parent_name, tags=tags
    )
    return run.info.run_id, True


def find_or_create_stage(client: MlflowClient, spec: RunSpec) -> str:
    """The stage's nested run; found by its attempt tag if an earlier try created it."""
    found = client.search_runs(
        [spec.experiment_id], filter_string=f"tags.`{TAG_ATTEMPT}` = '{spec.attempt}'"
    )
    if found:
        return found[0].info.run_id
    tags = {TAG_PARENT: spec.parent_id, TAG_PIPELINE_RUN: spec.pipeline_run_id, TAG_ROLE: "stage"}
    tags |= {TAG_STAGE: spec.stage, TAG_CONFIG_HASH: spec.config_hash, TAG_ATTEMPT: spec.attempt}
    run = client.create_run(
        spec.experiment_id,
        start_time=spec.start_ms,
        run_name=spec.stage,
        tags=tags | source_tags(spec.stage),
    )
    return run.info.run_id


def end_stale_attempts(client: MlflowClient, spec: RunSpec) -> list[str]:
    """End KILLED the runs of this stage still RUNNING from an earlier attempt (a pod that died).

    A retried pod starts the stage again under the same parent; the dead pod's run would
    otherwise stay RUNNING forever and keep the pipeline looking unfinished.
    """
    found = client.search_runs(
        [spec.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{spec.parent_id}' and tags.`{TAG_STAGE}` = "
        f"'{spec.stage}' and attributes.status = 'RUNNING'",
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


# --------------------------------------------------------------------------- the spill (ours)


class Spill:
    """The log calls MLflow has not confirmed yet, oldest first, at most ``max_entries``.

    An entry is plain JSON-able data (``{"kind": "metrics", "target": "stage", ...}``), so
    what an outage leaves behind can be written to disk and replayed by another process.
    Beyond ``max_entries`` the oldest entry is dropped and counted (a long outage must not
    grow memory without bound); :meth:`report_dropped` logs the count.
    """

    def __init__(self, max_entries: int, entries: list[dict] | None = None) -> None:
        self.max_entries = max_entries
        self.dropped = 0
        self._entries: dict[int, dict] = {}
        self._next = 0
        self._lock = threading.Lock()
        for entry in entries or []:
            self.add(entry)

    def add(self, entry: dict) -> int:
        """Keep ``entry``; returns its number (for :meth:`confirm`)."""
        with self._lock:
            seq, self._next = self._next, self._next + 1
            self._entries[seq] = entry
            while len(self._entries) > self.max_entries:
                del self._entries[next(iter(self._entries))]
                self.dropped += 1
                if self.dropped == 1:
                    log.warning(
                        "MLflow spill is full (tracking.spill_max_entries=%d): dropping the oldest "
                        "unsent log calls until the server is back",
                        self.max_entries,
                    )
        return seq

    def confirm(self, seq: int) -> None:
        with self._lock:
            self._entries.pop(seq, None)

    def get(self, seq: int) -> dict | None:
        with self._lock:
            return self._entries.get(seq)

    def numbers(self) -> list[int]:
        with self._lock:
            return list(self._entries)

    def entries(self) -> list[dict]:
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def report_dropped(self, where: str) -> None:
        if self.dropped:
            log.warning(
                "MLflow spill dropped %d log calls of %s (tracking.spill_max_entries=%d); raise "
                "the cap or keep the server up",
                self.dropped,
                where,
                self.max_entries,
            )


# --------------------------------------------------------------------------- the tracker


class StageTracker:
    """The handle a stage logs through; an MLflow outage never stops training.

    ``run_id`` / ``parent_run_id`` are None until the runs exist on the server (they are
    created in the background when the server was down at the stage's start). Files given to
    ``log_artifact`` are read when sent: files up to 16 MiB are copied at call time; keep
    larger files, directories and model directories in place until the stage ends.
    """

    def __init__(
        self,
        spec: RunSpec,
        *,
        spill_max_entries: int = 100_000,
        entries: list[dict] | None = None,
        parent_setup: list[dict] | None = None,
        system_metrics_interval_s: float | None = None,
        spill_to: str | None = None,
    ) -> None:
        self.spec = spec
        self.spill = Spill(spill_max_entries, entries)
        self.spill_to = spill_to  # where close() spills when the server stays down
        self._parent_setup = parent_setup or []  # sent only if this tracker creates the parent
        self._system_interval = system_metrics_interval_s
        self._system: Any | None = None
        self._client: MlflowClient | None = None  # made by the thread: a new sqlite store migrates
        self._jobs: queue.Queue[tuple[int | None, RunOperations | None]] = queue.Queue()
        self._cond = threading.Condition()
        self._online = self._closed = False
        self._failures = 0
        self._outage_since: float | None = None
        self._tried = threading.Event()  # the first attempt to reach the server is over
        self._spool = Path(tempfile.mkdtemp(prefix="coldstart-mlflow-"))
        self._spooled = 0
        self._thread = threading.Thread(target=self._watch, name="mlflow-spill", daemon=True)

    # ---- the stage's API

    @property
    def run_id(self) -> str | None:
        return self.spec.stage_id

    @property
    def parent_run_id(self) -> str | None:
        return self.spec.parent_id

    def log_params(self, params: dict[str, Any], parent: bool = False) -> None:
        for entry in _param_entries(params, "parent" if parent else "stage"):
            self._add(entry)

    def log_metrics(
        self, metrics: dict[str, float], step: int | None = None, parent: bool = False
    ) -> None:
        """Step metrics of the stage run; ``parent=True``: the pipeline's headline numbers."""
        ts, step = _now_ms(), int(step or 0)
        rows = [[k, float(v), ts, step] for k, v in metrics.items()]
        if rows:
            self._add({"kind": "metrics", "target": "parent" if parent else "stage", "rows": rows})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._add({"kind": "tags", "target": "stage", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(
        self, path: str | Path, artifact_path: str | None = None, name: str | None = None
    ) -> None:
        """A file (stored as ``name``, default its own name) or a directory's contents."""
        self._add(self._artifact_entry(Path(path), artifact_path, name))

    def log_figure(self, figure: Any, name: str) -> None:
        """A matplotlib figure saved as ``name`` (e.g. ``plots/reward.png``)."""
        target = self._spool_path(name)
        figure.savefig(target, bbox_inches="tight")
        self._log_spooled(target, name)

    def log_dict(self, data: dict, name: str) -> None:
        """``name`` ending in .yaml/.yml is written as YAML, anything else as JSON."""
        yml = name.endswith((".yaml", ".yml"))
        self.log_text(yaml.safe_dump(data) if yml else json.dumps(data, indent=2), name)

    def log_text(self, text: str, name: str) -> None:
        target = self._spool_path(name)
        target.write_text(text)
        self._log_spooled(target, name)

    def log_model(self, model_dir: str | Path, register_as: str | None = None) -> None:
        """The final model in MLflow's transformers format, registered as ``register_as`` if given.

        Sent in the background (the model is loaded once on CPU to write MLflow's model files);
        keep ``model_dir`` until the stage ends.
        """
        path = Path(model_dir).resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"log_model: {path} is not a model directory")
        self._add(
            {"kind": "model", "target": "stage", "path": str(path), "register_as": register_as}
        )

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for MLflow to confirm every log call; True if it did."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self.spill) and time.monotonic() < deadline:
                self._cond.wait(min(0.1, deadline - time.monotonic()))
        return not len(self.spill)

    # ---- lifecycle

    def start(self, wait_s: float = 10.0) -> bool:
        """Start the background thread; wait up to ``wait_s`` for the runs. True if they exist."""
        self._thread.start()
        self._tried.wait(wait_s)
        return self._online

    def close(
        self,
        status: str | None = "FINISHED",
        outage_timeout_s: float = 60.0,
        deadline_s: float | None = None,
    ) -> bool:
        """End the runs with ``status`` (None: no end marks); spill if the server stays down.

        ``deadline_s`` bounds the whole flush, even while the server answers, only slowly (a
        pod has a fixed grace period after SIGTERM); what is not sent by then is spilled for
        replay. Returns True when everything reached the server.
        """
        if self._closed:
            return True
        if self._system is not None:
            self._system.finish()
        if status is not None:
            end = _now_ms()
            for target in ("stage", "parent"):
                self._add({"kind": "end", "target": target, "status": status, "end_ms": end})
        drained = self._wait_drained(outage_timeout_s, deadline_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if not drained:
            self._write_spill()
        self.spill.report_dropped(f"stage {self.spec.stage}")
        self._jobs.put((None, None))
        self._thread.join(timeout=30.0 if drained else 1.0)
        shutil.rmtree(self._spool, ignore_errors=True)
        return drained

    def _wait_drained(self, outage_timeout_s: float, deadline_s: float | None = None) -> bool:
        began = time.monotonic()
        with self._cond:
            while len(self.spill):
                if not self._thread.is_alive():
                    return False
                if deadline_s is not None and time.monotonic() - began >= deadline_s:
                    log.warning(
                        "MLflow: %d entries not sent within %.0f s; spilled for replay",
                        len(self.spill),
                        deadline_s,
                    )
                    return False
                if self._outage_since is not None:
                    waited = time.monotonic() - max(began, self._outage_since)
                    if waited >= outage_timeout_s:
                        return False
                self._cond.wait(0.1)
        return True

    # ---- entries

    def _add(self, entry: dict) -> None:
        if self._closed:
            log.error("MLflow: %s logged after the stage's run was closed; dropped", entry["kind"])
            return
        seq = self.spill.add(entry)
        if self._online:
            self._submit(seq, entry)

    def _submit(self, seq: int, entry: dict) -> None:
        """Hand an entry to MLflow: batches to its async queue, files to our thread."""
        ops = None
        if entry["kind"] in _BATCH_KINDS:
            try:
                ops = self._client.log_batch(
                    self._run(entry), **_BATCH_KINDS[entry["kind"]](entry), synchronous=False
                )
            except MlflowException as exc:  # rejected before queueing (e.g. an invalid name)
                self._drop(seq, entry, exc)
                return
        self._jobs.put((seq, ops))

    def _run(self, entry: dict) -> str:
        return self.spec.stage_id if entry["target"] == "stage" else self.spec.parent_id

    def _artifact_entry(self, path: Path, artifact_path: str | None, name: str | None) -> dict:
        path = path.resolve()
        if not path.exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        if path.is_file() and (path.stat().st_size <= SMALL_FILE_BYTES or name):
            copy = self._spool_path(name or path.name)
            shutil.copy2(path, copy)
            path = copy
        return _artifact(path, artifact_path)

    def _log_spooled(self, path: Path, name: str) -> None:
        folder = Path(name).parent.as_posix()
        self._add(_artifact(path, None if folder == "." else folder))

    def _spool_path(self, name: str) -> Path:
        self._spooled += 1
        target = self._spool / str(self._spooled) / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _drop(self, seq: int, entry: dict, exc: BaseException) -> None:
        self.spill.confirm(seq)
        log.error(
            "MLflow rejected %s for the %s run (not retried): %s",
            entry["kind"],
            entry["target"],
            _short(exc),
        )

    # ---- the background thread: confirm, send files, probe and resend after an outage

    def _watch(self) -> None:
        _leave_stop_signals_to_the_main_thread()
        self._recover()
        self._tried.set()
        while True:
            wait = None if self._online else self._backoff()
            try:
                seq, ops = self._jobs.get(timeout=wait)
            except queue.Empty:
                if not self._closed:
                    self._recover()
                continue
            if seq is None:
                return
            if self._online:  # while offline the entry waits in the spill for the next probe
                self._deliver(seq, ops)
            with self._cond:
                self._cond.notify_all()

    def _deliver(self, seq: int, ops: RunOperations | None) -> None:
        if ops is not None:
            try:
                ops.wait()
                self.spill.confirm(seq)
                return
            except MlflowException:
                pass  # sent again below, synchronously, to learn whether the server is gone
        entry = self.spill.get(seq)
        if entry is None:
            return
        try:
            self._send(entry)
        except Exception as exc:
            if _is_permanent(exc):
                self._drop(seq, entry, exc)
            else:
                self._went_offline(exc)
            return
        self.spill.confirm(seq)

    def _recover(self) -> None:
        """Create the runs if needed and send the oldest entry; if that works, resend the rest."""
        probe: tuple[int, dict] | None = None
        try:
            if self._client is None:  # here: opening a store can fail (a sqlite file unwritable)
                self._client = MlflowClient(self.spec.tracking_uri)
            if self.spec.stage_id is None:
                self._connect()
            probe = next(((n, e) for n in self.spill.numbers() if (e := self.spill.get(n))), None)
            if probe is None:
                self._client.get_run(self.spec.stage_id)
            else:
                self._send(probe[1])
        except Exception as exc:
            if probe is not None and _is_permanent(exc):
                self._drop(probe[0], probe[1], exc)
            else:
                self._went_offline(exc)
            return
        if probe is not None:
            self.spill.confirm(probe[0])
        self._back_online()
        for seq in self.spill.numbers():  # taken after going online: a concurrent log call
            entry = self.spill.get(seq)  # either is in it or submits its entry itself
            if entry is not None:
                self._submit(seq, entry)

    def _connect(self) -> None:
        spec, client = self.spec, self._client
        if spec.experiment_id is None:
            spec.experiment_id = ensure_experiment(client, spec.experiment, spec.artifact_location)
        if spec.parent_id is None:
            spec.parent_id, created = find_or_create_parent(client, spec)
            first = self._parent_setup if created else [_PARENT_RUNNING]
            for entry in first:
                self.spill.add(entry)
        spec.stage_id = find_or_create_stage(client, spec)
        end_stale_attempts(client, spec)
        where = f"{spec.tracking_uri} (experiment {spec.experiment}, stage run {spec.stage_id})"
        log.info("MLflow: %s", run_url(spec) or where)

    def _backoff(self) -> float:
        return min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** max(0, self._failures - 1))

    def _went_offline(self, exc: BaseException) -> None:
        with self._cond:
            self._online = False
            self._failures += 1
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
            self._cond.notify_all()
        self._tried.set()
        if first:
            log.warning(
                "MLflow at %s is unreachable (%s). Training goes on: %d log calls are kept and "
                "sent when it is back (check MLFLOW_TRACKING_URI and the server).",
                self.spec.tracking_uri,
                _short(exc),
                len(self.spill),
            )

    def _back_online(self) -> None:
        with self._cond:
            since, self._outage_since, self._failures = self._outage_since, None, 0
            self._online = True
            self._cond.notify_all()
        if since is not None:
            log.warning(
                "MLflow at %s is back after %.0f s; sending the kept log calls.",
                self.spec.tracking_uri,
                time.monotonic() - since,
            )
        self._start_system_metrics(resume=since is not None)

    def _start_system_metrics(self, resume: bool) -> None:
        """MLflow's own monitor; it stops at a failed request, so it is restarted after an outage."""
        if self._system_interval is None or self._closed:
            return
        if self._system is not None:
            self._system.finish()
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system = SystemMetricsMonitor(
            self.spec.stage_id,
            sampling_interval=self._system_interval,
            resume_logging=resume,
            tracking_uri=self.spec.tracking_uri,
        )
        self._system.start()

    # ---- sending one entry synchronously (the background thread)

    def _send(self, entry: dict) -> None:
        kind, run_id, client = entry["kind"], self._run(entry), self._client
        if kind in _BATCH_KINDS:
            client.log_batch(run_id, **_BATCH_KINDS[kind](entry))
        elif kind == "artifact":
            path = Path(entry["path"])
            if not path.exists():
                raise FileNotFoundError(f"artifact {path} no longer exists; keep it until the end")
            log_files = client.log_artifacts if path.is_dir() else client.log_artifact
            log_files(run_id, str(path), entry["artifact_path"])
        elif kind == "status":
            client.update_run(run_id, status=entry["status"])
        elif kind == "end":
            client.set_terminated(run_id, entry["status"], end_time=entry["end_ms"])
        elif kind == "model":
            self._send_model(run_id, entry["path"], entry["register_as"])
        else:
            raise ValueError(f"unknown log entry kind {kind!r}")

    def _send_model(self, run_id: str, path: str, name: str | None) -> None:
        """``mlflow.transformers.log_model`` from the saved model dir (a retry after a lost answer
        finds the version this run registered, instead of registering a second one)."""
        import mlflow.transformers

        versions = f"name = '{name}' and run_id = '{run_id}'"
        if name and self._client.search_model_versions(versions):
            return
        mlflow.set_tracking_uri(self.spec.tracking_uri)  # Model.log uses the fluent URI
        model = mlflow.initialize_logged_model(  # in the run's experiment, not the fluent one
            name=MODEL_ARTIFACT, source_run_id=run_id, experiment_id=self.spec.experiment_id
        )
        info = mlflow.transformers.log_model(
            path,
            model_id=model.model_id,
            name=MODEL_ARTIFACT,
            task=MODEL_TASK,
            run_id=run_id,
            registered_model_name=name,
            pip_requirements=[f"{p}=={version(p)}" for p in ("torch", "transformers")],
        )
        if name:
            registered = f"{name}/{info.registered_model_version}"
            self._client.set_tag(run_id, TAG_REGISTERED, registered)
            log.info("MLflow: registered the model as %s", registered)

    # ---- spill to disk and replay

    def _write_spill(self) -> None:
        entries = self.spill.entries()
        setup = [] if self.spec.parent_id else self._parent_setup
        if self.spill_to is None:
            log.error(
                "MLflow at %s stayed unreachable: %d log calls lost",
                self.spec.tracking_uri,
                len(entries),
            )
            return
        base = storage.join(self.spill_to, self.spec.attempt)
        doc = {
            "version": SPILL_VERSION,
            "spec": asdict(self.spec),
            "entries": [_spill_files(e, base, i) for i, e in enumerate(entries)],
            "parent_setup": [_spill_files(e, base, len(entries) + i) for i, e in enumerate(setup)],
            "dropped": self.spill.dropped,
        }
        storage.write_text(base + ".json", json.dumps(doc))  # written last: the spill's marker
        log.warning(
            "MLflow at %s stayed unreachable: %d log calls saved to %s.json; the next stage "
            "(or `coldstart runs sync`) sends them once the server is back.",
            self.spec.tracking_uri,
            len(entries),
            base,
        )


def _param_entries(params: dict[str, Any], target: str) -> list[dict]:
    items = [[str(k), str(v)[:MAX_PARAM_LENGTH]] for k, v in params.items()]
    return [
        {"kind": "params", "target": target, "params": items[i : i + MAX_PARAMS_PER_BATCH]}
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH)
    ]


def _artifact(path: Path, artifact_path: str | None, target: str = "stage") -> dict:
    return {"kind": "artifact", "target": target, "path": str(path), "artifact_path": artifact_path}


def _spill_files(entry: dict, base: str, index: int) -> dict:
    """Copy an entry's file(s) next to the spill, so they outlive the pod."""
    if entry["kind"] not in ("artifact", "model"):
        return entry
    src = Path(entry["path"])
    if not src.exists():
        log.error("MLflow: %s vanished before it could be sent; not spilled", src)
        return {**entry, "kind": "lost"}
    rel = f"files/{index}/{src.name}"
    if src.is_dir():
        storage.sync_up(src, storage.join(base, rel))
    else:
        storage.upload_file(src, storage.join(base, rel))
    return {**{k: v for k, v in entry.items() if k != "path"}, "spilled": rel}


def _pending_spills(root: str) -> list[str]:
    try:
        listed = storage.list_prefix(root)
    except storage.StorageError as exc:
        log.warning("MLflow: cannot list pending spills under %s: %s", root, exc)
        return []
    return [u for u in listed if u.endswith(".json") and "/files/" not in u]


def replay_pending(root: str, outage_timeout_s: float = 30.0) -> tuple[int, int]:
    """Send the spills under ``root`` to their tracking servers; returns (sent, left)."""
    sent = left = 0
    for spill in _pending_spills(root):
        if _replay_one(spill, outage_timeout_s):
            sent += 1
        else:
            left += 1
    return sent, left


def _replay_one(spill: str, outage_timeout_s: float) -> bool:
    doc = json.loads(storage.read_text(spill))
    if doc.get("version") != SPILL_VERSION:
        log.error("MLflow: %s is a spill of another version; send it with that version", spill)
        return False
    files = spill[: -len(".json")]
    with tempfile.TemporaryDirectory(prefix="coldstart-replay-") as tmp:
        local = Path(files)
        if storage.is_s3(files):
            local = Path(tmp)
            if storage.exists(storage.join(files, "files")):
                storage.sync_down(files, local)

        def unspill(entry: dict) -> dict:
            return {**entry, "path": str(local / entry["spilled"])} if "spilled" in entry else entry

        entries = [unspill(e) for e in doc["entries"] if e["kind"] != "lost"]
        tracker = StageTracker(
            RunSpec(**doc["spec"]),
            spill_max_entries=len(entries) + len(doc["parent_setup"]) + 1,  # drops nothing
            entries=entries,
            parent_setup=[unspill(e) for e in doc["parent_setup"]],
        )
        tracker.start(wait_s=0.0)
        done = tracker.close(status=None, outage_timeout_s=outage_timeout_s)
    if done:
        storage.delete(files)
        storage.delete(spill)
        log.info("MLflow: replayed %s (%d log calls)", spill, len(entries))
    return done


# --------------------------------------------------------------------------- senders


def _metrics(entry: dict) -> dict:
    return {"metrics": [Metric(k, v, ts, step) for k, v, ts, step in entry["rows"]]}


def _params(entry: dict) -> dict:
    return {"params": [Param(k, v) for k, v in entry["params"]]}


def _tags(entry: dict) -> dict:
    return {"tags": [RunTag(k, v) for k, v in entry["tags"].items()]}


_BATCH_KINDS: dict[str, Callable[[dict], dict]] = {
    "metrics": _metrics,
    "params": _params,
    "tags": _tags,
}


# --------------------------------------------------------------------------- entry points


def _parent_setup(cfg: PipelineConfig, folder: Path) -> list[dict]:
    """Flattened config params and the config YAML, sent to the parent run when it is created."""
    config_file = folder / CONFIG_ARTIFACT
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return [*_param_entries(flatten(cfg), "parent"), _artifact(config_file, None, "parent")]


@contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (model logging, libraries that log on their own) at the stage's
    store during the stage, and restore MLFLOW_TRACKING_URI afterwards: a later stage in this
    process (or a subprocess) would otherwise take this URI over its own config's default."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets the variable


def _leave_stop_signals_to_the_main_thread() -> None:
    """Block SIGTERM and SIGINT in this thread and in the threads it starts (MLflow's async
    logging and its pools start from here): the kernel gives a process-wide signal to any thread
    that does not block it, and one caught by another thread leaves the main thread in a blocking
    call (a sleep, a wait) until that call returns, so the stage would not unwind (seen: a stage
    that went on sleeping after SIGTERM)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


KILLED_FLUSH_S = 20.0  # Kubernetes' default grace period after SIGTERM is 30 s


class StageTerminated(SystemExit):
    """SIGTERM (pod deleted or preempted) during a stage: unwinds it so its run ends KILLED."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into StageTerminated while a stage runs (main thread, default handler only)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return

    terminated = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if not terminated.is_set():  # once: a relayed copy must not interrupt the unwinding
            terminated.set()
            raise StageTerminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with _relay_to_main_thread(terminated):
            yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _relay_to_main_thread(terminated: threading.Event) -> Iterator[None]:
    """Hand SIGTERM to the main thread whichever thread the kernel gave it to.

    Threads we do not start (OpenBLAS's, Arrow's, a library's pool started from the main
    thread) do not block it; one of them may take the signal while the main thread sits in a
    blocking call, and the handler would run only when that call returns (seen: a stage asleep
    for two minutes after SIGTERM, 1 run in 6 on a loaded machine). Python writes each signal's
    number to the wakeup fd whichever thread caught it; a thread of ours, with signals blocked,
    reads it and sends SIGTERM to the main thread itself, which interrupts its call."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        earlier = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        earlier = None
    relaying = earlier == -1
    if not relaying and earlier is not None:  # someone else's (an event loop): leave it theirs
        signal.set_wakeup_fd(earlier)
    main = threading.main_thread().ident

    def relay() -> None:
        _leave_stop_signals_to_the_main_thread()
        while data := os.read(read_fd, 64):
            if signal.SIGTERM in data and not terminated.is_set():
                signal.pthread_kill(main, signal.SIGTERM)

    thread = threading.Thread(target=relay, name="sigterm-relay", daemon=True)
    if relaying:
        thread.start()
    try:
        yield
    finally:
        if relaying:
            signal.set_wakeup_fd(-1)
        os.close(write_fd)
        if thread.is_alive():
            thread.join(timeout=1.0)
        os.close(read_fd)


@contextmanager
def stage_run(cfg: PipelineConfig, stage: str, pipeline_run_id: str) -> Iterator[StageTracker]:
    """The stage's nested run under the pipeline's parent run; ended FAILED on error, KILLED on
    Ctrl-C or SIGTERM (Kubernetes gives a pod 30 s after SIGTERM: the flush then takes at most
    20 s in all, however slowly the server answers; the rest is spilled for replay).

    Never fails the stage because of MLflow: an unreachable server at start costs at most
    ``tracking.start_timeout_s``, and the runs are created once it answers.
    """
    limit_client_retries()
    spec = RunSpec.for_stage(cfg, stage, require_run_id(pipeline_run_id))
    tracking = cfg.tracking
    status, timeout, deadline = "FAILED", tracking.flush_timeout_s, None
    with (
        tempfile.TemporaryDirectory(prefix="coldstart-parent-") as tmp,
        _fluent_tracking_uri(spec.tracking_uri),
    ):
        tracker = StageTracker(
            spec,
            spill_max_entries=tracking.spill_max_entries,
            parent_setup=_parent_setup(cfg, Path(tmp)),
            system_metrics_interval_s=(
                tracking.system_metrics_interval_s if tracking.system_metrics else None
            ),
            spill_to=spill_root(cfg),
        )
        if tracker.start(tracking.start_timeout_s):
            replay_pending(spill_root(cfg), outage_timeout_s=min(10.0, timeout))
        try:
            with _sigterm_unwinds():
                yield tracker
            status = "FINISHED"
        except (KeyboardInterrupt, StageTerminated):
            status, timeout = "KILLED", min(timeout, KILLED_FLUSH_S)
            deadline = KILLED_FLUSH_S
            raise
        finally:
            tracker.close(status, timeout, deadline_s=deadline)


def log_final_model(tracker: StageTracker, cfg: PipelineConfig, model_dir: str | Path) -> None:
    """What SFT and GRPO call on their saved final model: log it in MLflow's transformers format
    (``tracking.log_model``) and register it when ``tracking.register_model_name`` is set."""
    if cfg.tracking.log_model or cfg.tracking.register_model_name:
        tracker.log_model(model_dir, register_as=cfg.tracking.register_model_name)
