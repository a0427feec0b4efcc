"""MLflow tracking against the local sqlite store and a real `mlflow server` (sqlite backend,
artifacts proxied to moto S3), including the server going away in the middle of a stage."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import matplotlib
import pytest
import yaml
from mlflow import MlflowClient

from components.common import storage
from components.common.tracking import (
    CONFIG_ARTIFACT,
    TAG_CONFIG_HASH,
    TAG_PIPELINE_RUN,
    RunSpec,
    StageTracker,
    local_tracking_uri,

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
def server_back(mlflow_server: MlflowServer):
    """The shared server, guaranteed running again after a test that stops it."""
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
        tracker.log_dict({"rows": [1, 2]}, "predictions/sample.json")
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


# --------------------------------------------------------------------------- server


def test_server_runs_artifacts_in_s3_and_model_registry(
    mlflow_server: MlflowServer, s3_env: S3Env, tmp_path: Path
) -> None:
    cfg = _cfg(tmp_path, mlflow_server.url, register_model_name="coldstart-grpo")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 1024)
    with stage_run(cfg, "grpo", "kfp-srv") as tracker:
        tracker.log_metrics({"grpo/rewards/accuracy/mean": 0.5}, step=1)
        version = register_model(tracker, model, cfg.tracking.register_model_name)
        remote = register_model(tracker, s3_env.uri("grpo/model"), "coldstart-grpo-s3")
    assert version == "1" and remote == "1"

    client = MlflowClient(mlflow_server.url)
    (parent,), stages = _runs(client, cfg.tracking.experiment)
    run_id = stages["grpo"].info.run_id
    registered = client.get_model_version("coldstart-grpo", "1")
    assert registered.run_id == run_id and registered.source.endswith(f"{run_id}/artifacts/model")
    assert client.get_model_version("coldstart-grpo-s3", "1").source == s3_env.uri("grpo/model")
    assert stages["grpo"].data.tags["coldstart.registered_model"] == "coldstart-grpo-s3/1"
    stored = storage.list_prefix(mlflow_server.artifacts_uri)
    assert any(u.endswith(f"{parent.info.run_id}/artifacts/{CONFIG_ARTIFACT}") for u in stored)
    assert any(u.endswith(f"{run_id}/artifacts/model/model.safetensors") for u in stored)


def test_outage_mid_stage_loses_nothing(
    server_back: MlflowServer, s3_env: S3Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop the server mid-stage, keep logging, start it again: every step arrives, one warning."""
    caplog.set_level(logging.WARNING, logger="components.common.tracking")
    cfg = _cfg(tmp_path, server_back.url)
    blocked: list[float] = []

    def log_step(tracker, step: int) -> None:
        start = time.perf_counter()
        tracker.log_metrics({"sft/train/loss": 1.0 / (step + 1), "sft/train/lr": 1e-5}, step=step)
        blocked.append(time.perf_counter() - start)

    with stage_run(cfg, "sft", "kfp-outage") as tracker:
        for step in range(5):
            log_step(tracker, step)
        assert tracker.flush(5.0)
        server_back.stop()
        for step in range(5, 25):
            log_step(tracker, step)
            time.sleep(0.05)
        tracker.log_params({"sft.during_outage": True})
        tracker.log_dict({"logged": "while down"}, "outage.json")
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
    caplog.set_level(logging.WARNING, logger="components.common.tracking")
    cfg = _cfg(tmp_path, server_back.url, flush_timeout_s=0.5)
    server_back.stop()
    start, start_ms = time.monotonic(), int(time.time() * 1000)
    with stage_run(cfg, "sft", "kfp-down") as tracker:
        entered = time.monotonic() - start
        assert tracker.run_id is None
        for step in range(10):
            tracker.log_metrics({"sft/train/loss": float(step)}, step=step)
        tracker.log_params({"sft.note": "offline"})
        tracker.log_dict({"a": 1}, "tables/a.json")
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


def test_sigterm_ends_the_stage_run_killed_with_its_logs(tmp_path: Path) -> None:
    """A pod deleted mid-stage (SIGTERM): the run ends KILLED, buffered metrics are sent, exit 143."""
    cfg = _cfg(tmp_path)
    script = textwrap.dedent(f"""
        import time
        from components.common.config import config_from_json
        from components.common.tracking import stage_run
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
