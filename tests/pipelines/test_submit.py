"""`coldstart submit` against a stand-in KFP API server: what kfp.Client sends, checked field by field.

No KFP server can run here. `FakeKFP` speaks the v2beta1 REST endpoints that
`Client.create_run_from_pipeline_package` and `get_run` call (healthz, experiments list/create,
runs create/get) on 127.0.0.1, records every request, and moves a run through scripted states.
"""

import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from coldstart.common.config import config_from_json, load_config
from coldstart.pipelines.caching import spec_tasks
from coldstart.pipelines.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
API = "/apis/v2beta1"


class FakeKFP:
    """Records (method, path, query, body); runs report `states` on successive GETs, the last one sticks."""

    def __init__(self, states=("PENDING", "RUNNING", "SUCCEEDED")):
        self.states = list(states)
        self.requests: list[tuple[str, str, dict, dict]] = []
        self.experiments: list[dict] = []
        self.runs: dict[str, dict] = {}
        self.gets: dict[str, int] = defaultdict(int)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, method: str, path: str) -> list[dict]:
        return [body for m, p, _, body in self.requests if m == method and p == API + path]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> tuple[str, dict, dict]:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append((self.command, url.path, query, body))
                return url.path, query, body

            def do_GET(self):
                path, query, _ = self._record()
                if path == f"{API}/healthz":
                    return self._reply(200, {"multi_user": False})
                if path == f"{API}/experiments":
                    wanted = [
                        p["stringValue"]
                        for p in json.loads(query.get("filter", "{}")).get("predicates", [])
                    ]
                    found = [
                        e for e in fake.experiments if e["display_name"] in wanted or not wanted
                    ]
                    return self._reply(
                        200, {"experiments": found, "total_size": len(found)} if found else {}
                    )
                if path.startswith(f"{API}/runs/"):
                    run_id = path.rsplit("/", 1)[1]
                    if run_id not in fake.runs:
                        return self._reply(404, {"error": "not found"})
                    state = fake.states[min(fake.gets[run_id], len(fake.states) - 1)]
                    fake.gets[run_id] += 1
                    tasks = [{"display_name": "data_prep", "state": state}]
                    details = {"task_details": tasks}
                    return self._reply(
                        200, {**fake.runs[run_id], "state": state, "run_details": details}
                    )
                return self._reply(404, {"error": f"no route {path}"})

            def do_POST(self):
                path, _, body = self._record()
                if path == f"{API}/experiments":
                    exp = {**body, "experiment_id": f"exp-{len(fake.experiments) + 1}"}
                    fake.experiments.append(exp)
                    return self._reply(200, exp)
                if path == f"{API}/runs":
                    run = {
                        "run_id": f"run-{len(fake.runs) + 1}",
                        "display_name": body.get("display_name"),
                        "experiment_id": body.get("experiment_id"),
                        "state": "PENDING",
                    }
                    fake.runs[run["run_id"]] = run
                    return self._reply(200, run)
                return self._reply(404, {"error": f"no route {path}"})

        return Handler

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_kfp(monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    with FakeKFP() as fake:
        yield fake


def compiled(tmp_path, *overrides):
    out = tmp_path / "expected.yaml"
    args = ["compile", "--config", str(CONFIGS / "tiny.yaml"), "--output", str(out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    return list(yaml.safe_load_all(out.read_text()))


def submitted_run(fake: FakeKFP) -> dict:
    (body,) = fake.bodies("POST", "/runs")
    return body


def cached_tasks(run: dict) -> dict[str, bool]:
    """{task: enableCache} of every task that runs a container, in every DAG (root, conditions, loops)."""
    spec = run["pipeline_spec"]["pipeline_spec"]
    runs_container = {name for name, comp in spec["components"].items() if "executorLabel" in comp}
    return {
        name: bool(task.get("cachingOptions", {}).get("enableCache"))
        for name, task in spec_tasks(spec)
        if task["componentRef"]["name"] in runs_container
    }


def test_submit_sends_compiled_spec_config_experiment_and_prints_run_url(
    fake_kfp, tmp_path, capsys
):
    lr = "sft.learning_rate=3e-05"
    rc = main(
        [
            "submit",
            "--host",
            fake_kfp.url,
            "--config",
            str(CONFIGS / "tiny.yaml"),
            "--set",
            lr,
            "--experiment",
            "ablations",
            "--run-name",
            "cold-start-1",
        ]
    )
    assert rc == 0
    (exp,) = fake_kfp.bodies("POST", "/experiments")
    assert exp["display_name"] == "ablations"
    run = submitted_run(fake_kfp)
    assert run["display_name"] == "cold-start-1"
    assert run["experiment_id"] == "exp-1"

    # the whole compiled pipeline travels inline: the same spec `coldstart compile` writes
    spec, platform = compiled(tmp_path, lr)
    assert run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"] == spec["deploymentSpec"]
    assert run["pipeline_spec"]["pipeline_spec"]["root"]["dag"] == spec["root"]["dag"]
    assert run["pipeline_spec"]["platform_spec"] == platform

    # the config travels as the run's parameter, overrides applied
    params = run["runtime_config"]["parameters"]
    assert set(params) == {"config_json"}
    cfg = config_from_json(params["config_json"])
    assert cfg == load_config(CONFIGS / "tiny.yaml", [lr]) and cfg.sft.learning_rate == 3e-05
    assert "pipeline_root" not in run["runtime_config"]  # none configured: the server's default

    # caching follows the config (on) unless --no-cache
    caching = cached_tasks(run)
    assert caching and all(caching.values()), caching
    assert f"{fake_kfp.url}/#/runs/details/run-1" in capsys.readouterr().out


def test_submit_reuses_an_existing_experiment_and_sets_pipeline_root(fake_kfp):
    fake_kfp.experiments.append({"experiment_id": "exp-old", "display_name": "coldstart-tiny"})
    rc = main(
        [
            "submit",
            "--host",
            fake_kfp.url,
            "--config",
            str(CONFIGS / "tiny.yaml"),
            "--set",
            "cluster.pipeline_root=s3://bucket/roots",
            "--set",
            "cluster.service_account=trainer",
        ]
    )
    assert rc == 0
    assert (
        fake_kfp.bodies("POST", "/experiments") == []
    )  # found by name (tracking.experiment), not created
    run = submitted_run(fake_kfp)
    assert run["experiment_id"] == "exp-old"
    assert run["runtime_config"]["pipeline_root"] == "s3://bucket/roots"
    assert run["service_account"] == "trainer"


@pytest.mark.parametrize("ablation", ["false", "true"])
def test_no_cache_turns_caching_off_for_every_task_of_every_branch(fake_kfp, ablation):
    assert (
        main(["submit", "--host", fake_kfp.url, "--set", f"ablation={ablation}", "--no-cache"]) == 0
    )
    caching = cached_tasks(submitted_run(fake_kfp))
    assert caching and not any(caching.values()), caching


def test_caching_off_in_config_compiles_into_the_spec(fake_kfp):
    assert main(["submit", "--host", fake_kfp.url, "--set", "cluster.caching=false"]) == 0
    caching = cached_tasks(submitted_run(fake_kfp))
    assert caching and not any(caching.values()), caching


@pytest.mark.parametrize(
    ("states", "rc"), [(("PENDING", "RUNNING", "SUCCEEDED"), 0), (("RUNNING", "FAILED"), 1)]
)
def test_watch_polls_until_the_run_ends(fake_kfp, capsys, states, rc):
    fake_kfp.states = list(states)
    assert main(["submit", "--host", fake_kfp.url, "--watch", "--poll-interval", "0.01"]) == rc
    out = capsys.readouterr().out
    for state in states:
        assert f"run: {state}" in out and f"data_prep: {state}" in out
    assert fake_kfp.gets["run-1"] == len(states)  # stopped polling at the end state


def test_namespace_goes_to_the_experiment(fake_kfp):
    assert (
        main(["submit", "--host", fake_kfp.url, "--namespace", "team-a", "--experiment", "e"]) == 0
    )
    (exp,) = fake_kfp.bodies("POST", "/experiments")
    assert exp == {"display_name": "e", "namespace": "team-a"}
    lists = [q for m, p, q, _ in fake_kfp.requests if m == "GET" and p == f"{API}/experiments"]
    assert lists and all(q.get("namespace") == "team-a" for q in lists)


def test_bearer_token_from_the_environment_only(fake_kfp, monkeypatch):
    seen = []
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok-123")
    handler = fake_kfp.server.RequestHandlerClass
    orig_get = handler.do_GET

    def do_get(self):
        seen.append(self.headers.get("Authorization"))
        return orig_get(self)

    monkeypatch.setattr(handler, "do_GET", do_get)
    assert main(["submit", "--host", fake_kfp.url]) == 0
    assert seen and all(h == "Bearer tok-123" for h in seen)
    assert "tok-123" not in json.dumps([r[3] for r in fake_kfp.requests])
