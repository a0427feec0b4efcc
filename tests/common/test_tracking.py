"""MLflow tracking against the local sqlite store and a real `mlflow server` (sqlite backend,
artifacts proxied to moto S3), including the server going away in the middle of a stage."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import matplotlib
import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from coldstart.common import storage
from coldstart.common.tracking import (
    CONFIG_ARTIFACT,
    TAG_CONFIG_HASH,
    TAG_PIPELINE_RUN,
    RunSpec,
    StageTracker,
    local_tracking_uri,
    log_final_model,
    spill_root,
    stage_run,
)
from tests.conftest import tiny_config
from tests.servers import MlflowServer, S3Env, free_port

matplotlib.use("Agg")
import matplotlib.pyplot as plt

UNREACHABLE = "is unreachable"


def _cfg(tmp_path: Path, uri: str | None = None, **tracking):
    tracking = {"experiment": f"t-{uuid.uuid4().hex[:8]}", "system_metrics": False, **tracking}
    if uri:
        tracking["tracking_uri"] = uri
    return tiny_config(tmp_path, tracking=tracking)


def _runs(client: MlflowClient, experiment: str):
    """(parents, {stage: its newest run}) of an experiment."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("coldstart.role") == "pipeline"]
    stages = {
        r.data.tags["coldstart.stage"]: r
        for r in runs
        if r.data.tags.get("coldstart.role") == "stage"
    }
    return parents, stages


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _artifact(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text()


@pytest.fixture
def server_back(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch):
    """The shared server, guaranteed running again after a test that stops it.

    A stopped server refuses at once; a long HTTP timeout keeps a slow answer on a loaded test
    machine from looking like a second outage.
    """
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    yield mlflow_server
    if mlflow_server.process.proc is None:
        mlflow_server.start()


# --------------------------------------------------------------------------- local store


def test_local_store_parent_and_nested_stage_runs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, system_metrics=True, system_metrics_interval_s=0.1)
    with stage_run(cfg, "data_prep", "kfp-1") as tracker:
        tracker.log_params({"data.source": "synthetic"})
        tracker.log_metrics({"data/rl_rows": 48})
    with stage_run(cfg, "grpo", "kfp-1") as tracker:
        for step in range(3):
            tracker.log_metrics(
                {"grpo/rewards/accuracy/mean": step / 4, "grpo/loss": 1.0 - step}, step=step
            )
        fig = plt.figure()
        plt.plot([0, 1])
        tracker.log_figure(fig, "plots/reward.png")
        (tmp_path / "sample.json").write_text('{"rows": [1, 2]}')
        tracker.log_artifact(tmp_path / "sample.json", "predictions")
        time.sleep(0.35)  # a few system-metric samples
    with pytest.raises(RuntimeError, match="boom"), stage_run(cfg, "eval", "kfp-1"):
        raise RuntimeError("boom")
    dead = StageTracker(
        RunSpec.for_stage(cfg, "sft", "kfp-1")
    )  # a pod that died mid-stage: never closed
    assert dead.start() and dead.close(status=None)
    with stage_run(cfg, "sft", "kfp-1"):  # its retry
        pass

    client = MlflowClient(local_tracking_uri(cfg.output_dir))
    (parent,), stages = _runs(client, cfg.tracking.experiment)
    assert (
        parent.data.tags[TAG_PIPELINE_RUN] == "kfp-1"
        and parent.data.tags[TAG_CONFIG_HASH] == cfg.digest()
    )
    assert parent.data.params["grpo.clip_ratio_high"] == str(cfg.grpo.clip_ratio_high)
    config_yaml = _artifact(client, parent.info.run_id, CONFIG_ARTIFACT, tmp_path)
    assert yaml.safe_load(config_yaml) == cfg.model_dump(mode="json")
    assert set(stages) == {"data_prep", "grpo", "eval", "sft"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stages.values())
    statuses = {s: r.info.status for s, r in stages.items()}
    assert statuses == {
        "data_prep": "FINISHED",
        "grpo": "FINISHED",
        "eval": "FAILED",
        "sft": "FINISHED",
    }
    sft_runs = client.search_runs([parent.info.experiment_id], "tags.`coldstart.stage` = 'sft'")
    assert sorted(r.info.status for r in sft_runs) == [
        "FINISHED",
        "KILLED",
    ]  # the dead attempt ended
    grpo = stages["grpo"]
    assert _steps(client, grpo.info.run_id, "grpo/rewards/accuracy/mean") == [0, 1, 2]
    assert grpo.data.metrics["grpo/loss"] == -1.0
    assert any(k.startswith("system/cpu_utilization") for k in grpo.data.metrics), sorted(
        grpo.data.metrics
    )
    listed = {a.path for a in client.list_artifacts(grpo.info.run_id, "plots")}
    assert listed == {"plots/reward.png"}
    assert '"rows"' in _artifact(client, grpo.info.run_id, "predictions/sample.json", tmp_path)
    assert stages["data_prep"].data.params == {"data.source": "synthetic"}
    assert str(Path(cfg.output_dir).resolve() / "mlflow" / "artifacts") in grpo.info.artifact_uri


def test_a_rejected_call_is_dropped_with_an_error_and_the_rest_arrives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A param changed to another value is refused by MLflow: an error, no outage, no retry loop."""
    caplog.set_level(logging.WARNING, logger="coldstart.common.tracking")
    cfg = _cfg(tmp_path)
    with stage_run(cfg, "sft", "kfp-reject") as tracker:
        tracker.log_params({"sft.seed": 1})
        assert tracker.flush(60.0)
        tracker.log_params({"sft.seed": 2})
        tracker.log_metrics({"sft/train/loss": 0.5}, step=1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("MLflow rejected params" in m for m in messages), messages
    assert not any(UNREACHABLE in m for m in messages), messages
    _, stages = _runs(MlflowClient(local_tracking_uri(cfg.output_dir)), cfg.tracking.experiment)
    assert stages["sft"].data.params["sft.seed"] == "1"
    assert stages["sft"].data.metrics["sft/train/loss"] == 0.5


# --------------------------------------------------------------------------- server


def _rest(server: MlflowServer, endpoint: str, body: dict | None = None) -> dict:
    """MLflow's REST API as the UI and any user's script see it (GET, or POST with a JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.url}/api/2.0/mlflow/{endpoint}",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_server_shows_what_users_expect(
    mlflow_server: MlflowServer, s3_env: S3Env, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Through the REST API: previewable artifact names, the model logged in the transformers
    format and registered, headline metrics on the parent run, source tags on every run."""
    cfg = _cfg(tmp_path, mlflow_server.url, register_model_name=f"m-{uuid.uuid4().hex[:6]}")
    report, chart = tmp_path / "kfp" / "report", tmp_path / "kfp" / "chart"  # kfp: no extension
    report.parent.mkdir()
    report.write_text("# scores")
    chart.write_bytes(b"\x89PNG\r\n\x1a\n")
    with stage_run(cfg, "eval", "kfp-ui") as tracker:
        tracker.log_metrics({"eval/sft/synthetic/score": 0.5, "eval/sft/average": 0.5}, parent=True)
        tracker.log_artifact(report, "eval", name="report.md")
        tracker.log_artifact(chart, "eval", name="chart.png")
    with stage_run(cfg, "grpo", "kfp-ui") as tracker:
        log_final_model(tracker, cfg, tiny_model_dir)

    experiment = _rest(
        mlflow_server, f"experiments/get-by-name?experiment_name={cfg.tracking.experiment}"
    )
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = _rest(mlflow_server, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
    by_role = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        by_role[tags.get("coldstart.stage", "pipeline")] = (run, tags)
        assert tags["mlflow.source.type"] == "JOB" and tags["mlflow.source.name"].startswith(
            "coldstart/"
        )
        assert len(tags["mlflow.source.git.commit"]) == 40, tags
    parent, _ = by_role["pipeline"]
    headline = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert headline == {"eval/sft/synthetic/score": 0.5, "eval/sft/average": 0.5}

    eval_id = by_role["eval"][0]["info"]["run_id"]
    listed = _rest(mlflow_server, f"artifacts/list?run_id={eval_id}&path=eval")["files"]
    assert {f["path"] for f in listed} == {"eval/report.md", "eval/chart.png"}

    grpo_id = by_role["grpo"][0]["info"]["run_id"]
    models = _rest(mlflow_server, "logged-models/search", {"experiment_ids": [experiment_id]})
    (model,) = models["models"]
    assert model["info"]["source_run_id"] == grpo_id and model["info"]["name"] == "model"
    name = cfg.tracking.register_model_name
    query = urllib.parse.urlencode({"filter": f"name='{name}'"})
    versions = _rest(mlflow_server, f"model-versions/search?{query}")
    (version,) = versions["model_versions"]
    assert version["run_id"] == grpo_id and version["status"] == "READY"
    assert by_role["grpo"][1]["coldstart.registered_model"] == f"{name}/1"
    mlmodel = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{model['info']['artifact_uri']}/MLmodel",
        dst_path=str(tmp_path),
        tracking_uri=mlflow_server.url,
    )
    assert "transformers" in yaml.safe_load(Path(mlmodel).read_text())["flavors"]
    stored = storage.list_prefix(mlflow_server.artifacts_uri)  # proxied into the object store
    assert any(
        u.endswith(f"{parent['info']['run_id']}/artifacts/{CONFIG_ARTIFACT}") for u in stored
    )


def test_outage_mid_stage_loses_nothing(
    server_back: MlflowServer,
    s3_env: S3Env,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stop the server mid-stage, keep logging, start it again: every step arrives, one warning."""
    caplog.set_level(logging.WARNING, logger="coldstart.common.tracking")
    cfg = _cfg(tmp_path, server_back.url)
    blocked: list[float] = []

    def log_step(tracker, step: int) -> None:
        start = time.perf_counter()
        tracker.log_metrics({"sft/train/loss": 1.0 / (step + 1), "sft/train/lr": 1e-5}, step=step)
        blocked.append(time.perf_counter() - start)

    with stage_run(cfg, "sft", "kfp-outage") as tracker:
        for step in range(5):
            log_step(tracker, step)
        assert tracker.flush(60.0)
        server_back.stop()
        for step in range(5, 25):
            log_step(tracker, step)
            time.sleep(0.05)
        tracker.log_params({"sft.during_outage": True})
        (tmp_path / "outage.json").write_text('{"logged": "while down"}')
        tracker.log_artifact(tmp_path / "outage.json")
        _wait_for(lambda: UNREACHABLE in caplog.text, 10)
        server_back.start()
        for step in range(25, 30):
            log_step(tracker, step)

    warnings = [r.getMessage() for r in caplog.records]
    assert sum(UNREACHABLE in m for m in warnings) == 1, warnings
    assert any("is back after" in m for m in warnings), warnings
    client = MlflowClient(server_back.url)
    _, stages = _runs(client, cfg.tracking.experiment)
    run = stages["sft"]
    assert _steps(client, run.info.run_id, "sft/train/loss") == list(range(30))
    assert _steps(client, run.info.run_id, "sft/train/lr") == list(range(30))
    assert run.data.params["sft.during_outage"] == "True" and run.info.status == "FINISHED"
    assert "while down" in _artifact(client, run.info.run_id, "outage.json", tmp_path)
    assert max(blocked) < 0.05, f"a log call blocked {max(blocked):.3f} s"


def test_server_down_at_start_spills_then_next_stage_replays(
    server_back: MlflowServer, s3_env: S3Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole stage without a server: it runs, spills; the next stage sends it all."""
    caplog.set_level(logging.WARNING, logger="coldstart.common.tracking")
    cfg = _cfg(tmp_path, server_back.url, flush_timeout_s=0.5)
    server_back.stop()
    start, start_ms = time.monotonic(), int(time.time() * 1000)
    with stage_run(cfg, "sft", "kfp-down") as tracker:
        entered = time.monotonic() - start
        assert tracker.run_id is None
        for step in range(10):
            tracker.log_metrics({"sft/train/loss": float(step)}, step=step)
        tracker.log_params({"sft.note": "offline"})
        (tmp_path / "a.json").write_text('{"a": 1}')
        tracker.log_artifact(tmp_path / "a.json", "tables")
    assert entered < 3.0, f"stage start waited {entered:.1f} s for a refused connection"
    (spill,) = [
        u
        for u in storage.list_prefix(spill_root(cfg))
        if u.endswith(".json") and "/files/" not in u
    ]

    server_back.start()
    with stage_run(cfg, "grpo", "kfp-down") as tracker:
        tracker.log_metrics({"grpo/reward/mean": 0.25}, step=0)
    assert not storage.exists(spill)

    client = MlflowClient(server_back.url)
    (parent,), stages = _runs(client, cfg.tracking.experiment)
    sft = stages["sft"]
    assert (
        sft.data.tags["mlflow.parentRunId"]
        == parent.info.run_id
        == stages["grpo"].data.tags["mlflow.parentRunId"]
    )
    assert _steps(client, sft.info.run_id, "sft/train/loss") == list(range(10))
    assert sft.data.params == {"sft.note": "offline"} and sft.info.status == "FINISHED"
    assert abs(sft.info.start_time - start_ms) < 2000  # the stage's real start, not the replay's
    assert _artifact(client, sft.info.run_id, "tables/a.json", tmp_path).strip().startswith("{")
    assert parent.data.params["sft.learning_rate"] == str(cfg.sft.learning_rate)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {CONFIG_ARTIFACT}
    assert sum(UNREACHABLE in r.getMessage() for r in caplog.records) == 1


def test_hung_server_never_blocks_a_log_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts connections and never answers (the "slow" case)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    port = free_port()
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", port))
        sink.listen(64)  # the kernel completes handshakes; nobody ever reads
        cfg = _cfg(tmp_path, f"http://127.0.0.1:{port}", start_timeout_s=0.5, flush_timeout_s=0.5)
        start = time.monotonic()
        with stage_run(cfg, "grpo", "kfp-hung") as tracker:
            entered = time.monotonic() - start
            worst = 0.0
            for step in range(200):
                t0 = time.perf_counter()
                tracker.log_metrics({"grpo/reward/mean": 0.1}, step=step)
                worst = max(worst, time.perf_counter() - t0)
        total = time.monotonic() - start
    assert entered < 1.5 and worst < 0.05, (entered, worst)
    assert total < 6.0, f"closing took {total:.1f} s"
    assert (
        "MLFLOW_TRACKING_URI" not in os.environ
    )  # the stage's URI does not leak into later stages
    spills = [u for u in storage.list_prefix(spill_root(cfg)) if u.endswith(".json")]
    assert len(spills) == 1 and '"grpo/reward/mean", 0.1' in storage.read_text(spills[0])


def test_spill_cap_drops_the_oldest_with_a_counted_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A long outage: the spill keeps the newest `spill_max_entries` log calls and says how many
    it dropped; what it kept is written for replay."""
    caplog.set_level(logging.WARNING, logger="coldstart.common.tracking")
    nobody = f"http://127.0.0.1:{free_port()}"
    cfg = _cfg(tmp_path, nobody, spill_max_entries=5, start_timeout_s=0.2, flush_timeout_s=0.2)
    with stage_run(cfg, "grpo", "kfp-cap") as tracker:
        for step in range(20):
            tracker.log_metrics({"grpo/loss": float(step)}, step=step)
    # 20 metric calls + 2 end marks (stage, parent) = 22 entries, cap 5: 17 dropped
    messages = [r.getMessage() for r in caplog.records]
    assert sum("spill is full" in m for m in messages) == 1, messages
    assert any("dropped 17 log calls" in m for m in messages), messages
    (spill,) = [u for u in storage.list_prefix(spill_root(cfg)) if u.endswith(".json")]
    doc = json.loads(storage.read_text(spill))
    steps = [e["rows"][0][3] for e in doc["entries"] if e["kind"] == "metrics"]
    assert steps == [17, 18, 19] and doc["dropped"] == 17
    assert [e["kind"] for e in doc["entries"][-2:]] == ["end", "end"]


def test_sigterm_ends_the_stage_run_killed_with_its_logs(tmp_path: Path) -> None:
    """A pod deleted mid-stage (SIGTERM): the run ends KILLED, buffered metrics are sent, exit 143."""
    cfg = _cfg(tmp_path)
    script = textwrap.dedent(f"""
        import time
        from coldstart.common.config import config_from_json
        from coldstart.common.tracking import stage_run
        cfg = config_from_json({cfg.to_json()!r})
        with stage_run(cfg, "sft", "kfp-term") as tracker:
            for step in range(5):
                tracker.log_metrics({{"sft/train/loss": float(step)}}, step=step)
            print("training", flush=True)
            time.sleep(120)
    """)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert proc.stdout.readline().strip() == "training"
        proc.send_signal(signal.SIGTERM)
        # The main thread sleeps in one blocking call: it unwinds only if the signal reaches it,
        # not one of MLflow's logging threads (they block it); the flush is bounded (20 s).
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    client = MlflowClient(local_tracking_uri(cfg.output_dir))
    (parent,), stages = _runs(client, cfg.tracking.experiment)
    assert stages["sft"].info.status == "KILLED" and parent.info.status == "KILLED"
    assert _steps(client, stages["sft"].info.run_id, "sft/train/loss") == [0, 1, 2, 3, 4]


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_a_killed_stage_flushes_for_at_most_its_grace_period_then_spills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that answers, only slowly (no outage to time out on): after Ctrl-C or SIGTERM the
    stage still ends within its grace period, and what was not sent is spilled for replay."""
    import threading

    from coldstart.common import tracking

    release = threading.Event()
    monkeypatch.setattr(tracking.StageTracker, "_recover", lambda self: release.wait(30))
    monkeypatch.setattr(tracking, "KILLED_FLUSH_S", 0.5)
    cfg = _cfg(tmp_path, start_timeout_s=0.1)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), stage_run(cfg, "sft", "kfp-slow") as tracker:
            tracker.log_metrics({"sft/train/loss": 1.5}, step=3)
            raise KeyboardInterrupt
        took = time.monotonic() - start
    finally:
        release.set()
    assert took < 5.0, f"the killed stage took {took:.1f} s to end"
    (spill,) = [u for u in storage.list_prefix(spill_root(cfg)) if u.endswith(".json")]
    doc = json.loads(storage.read_text(spill))
    assert [e["kind"] for e in doc["entries"]][-3:] == ["metrics", "end", "end"]
    assert {e["status"] for e in doc["entries"] if e["kind"] == "end"} == {"KILLED"}
