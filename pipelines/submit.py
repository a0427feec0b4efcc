"""`coldstart submit`: compile the DAG from a config and start a run on a Kubeflow Pipelines server.

The run gets the compiled spec inline (no pipeline upload), the config as its `config_json`
parameter, the experiment (default: the MLflow experiment's name), `cluster.pipeline_root` and
`cluster.service_account`; `--no-cache` turns caching off for every task of the run. Authentication:
a bearer token in $KF_PIPELINES_TOKEN (never a command-line argument), or none (port-forward).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldstart.common.config import PipelineConfig
from coldstart.common.errors import InputError
from coldstart.common.stage_cli import resolve_config
from coldstart.pipelines.caching import disable_caching_in_package, enable_caching_override
from coldstart.pipelines.cluster_config import cluster_config
from coldstart.pipelines.compile import add_image_tag_arg, compile_package

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
TOKEN_ENV = "KF_PIPELINES_TOKEN"


@dataclass(frozen=True)
class ServerOptions:
    """Where and how to start a run; shared by `submit` and `rerun --host`."""

    host: str
    namespace: str | None = None
    experiment: str | None = None
    run_name: str | None = None
    no_cache: bool = False
    watch: bool = False
    poll_interval_s: float = 10.0
    watch_timeout_s: float = 0.0
    ui_host: str | None = None


@dataclass(frozen=True)
class SubmitResult:
    run_id: str
    url: str
    experiment: str
    final_state: str | None = None


def add_server_args(parser: argparse.ArgumentParser, host_required: bool = True) -> None:
    env_host = os.environ.get("KF_PIPELINES_ENDPOINT")
    parser.add_argument(
        "--host",
        default=env_host,
        required=host_required and not env_host,
        help="KFP API server URL, e.g. http://localhost:8888 (default: $KF_PIPELINES_ENDPOINT)",
    )
    parser.add_argument("--namespace", default=None, help="profile namespace (multi-user Kubeflow)")
    parser.add_argument(
        "--experiment", default=None, help="KFP experiment (default: tracking.experiment)"
    )
    parser.add_argument(
        "--run-name", default=None, help="display name of the run (default: <name> <time>)"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="run every task even if a cached result exists"
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="follow the run until it ends; exit 1 unless it succeeded",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=10.0, help="seconds between status polls (--watch)"
    )
    parser.add_argument(
        "--watch-timeout", type=float, default=0.0, help="stop watching after this long; 0 = never"
    )
    add_image_tag_arg(parser)
    parser.add_argument(
        "--ui-host",
        default=None,
        help="base URL of the KFP UI for the printed link (default: --host)",
    )


def server_options(args: argparse.Namespace) -> ServerOptions:
    if not args.host:
        raise InputError(
            "--host is required (or set KF_PIPELINES_ENDPOINT), e.g. --host http://localhost:8888"
        )
    return ServerOptions(
        host=args.host.rstrip("/"),
        namespace=args.namespace,
        experiment=args.experiment,
        run_name=args.run_name,
        no_cache=args.no_cache,
        watch=args.watch,
        poll_interval_s=args.poll_interval,
        watch_timeout_s=args.watch_timeout,
        ui_host=args.ui_host,
    )


def check_host(host: str, timeout_s: float = 5.0) -> None:
    """The KFP API server answers at all; else one clear error instead of urllib3's retries.

    Any HTTP answer counts (an auth proxy in front of it answers 302/401/403): only a refused
    connection, an unknown name or a timeout stop the command.
    """
    request = urllib.request.Request(f"{host}/apis/v2beta1/healthz")
    if os.environ.get(TOKEN_ENV):
        request.add_header("Authorization", f"Bearer {os.environ[TOKEN_ENV]}")
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(
            f"cannot reach the KFP API server at {host} ({reason}): check --host / "
            "$KF_PIPELINES_ENDPOINT, or forward the port first: "
            "kubectl port-forward -n kubeflow svc/ml-pipeline 8888:8888"
        ) from None


def make_client(opts: ServerOptions) -> Any:
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(
            host=opts.host,
            namespace=opts.namespace or "kubeflow",
            existing_token=os.environ.get(TOKEN_ENV) or None,
            ui_host=opts.ui_host,
        )


def run_url(opts: ServerOptions, run_id: str) -> str:
    return f"{(opts.ui_host or opts.host).rstrip('/')}/#/runs/details/{run_id}"


def cluster_warnings(cfg: PipelineConfig) -> list[str]:
    """Settings that work locally but lose data on a cluster."""
    notes = []
    if not cfg.output_dir.startswith("s3://"):
        notes.append(
            f"output_dir {cfg.output_dir!r} is not s3://: on the cluster it is inside each pod and lost "
            "with it (checkpoints, caches); set output_dir: s3://bucket/prefix"
        )
    return notes


def submit_pipeline(
    pipeline_func: Any,
    cfg: PipelineConfig,
    opts: ServerOptions,
    client_factory: Callable[[ServerOptions], Any] = make_client,
    before_server: Callable[[], None] = lambda: None,
) -> SubmitResult:
    """Compile `pipeline_func`, create the run, print its URL; with `opts.watch`, follow it to the end.

    `before_server` (host and preflight checks) runs after the compile has refused mutable images
    and before the first server call, so the cheapest refusal comes first."""
    for note in cluster_warnings(cfg):
        print(f"warning: {note}", file=sys.stderr)
    experiment = opts.experiment or cfg.tracking.experiment
    cluster = cluster_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        package = str(Path(tmp) / "pipeline.yaml")
        compile_package(pipeline_func, package)  # refuses mutable images before any server call
        before_server()
        client = client_factory(opts)
        if opts.no_cache:
            disable_caching_in_package(package)
        with contextlib.redirect_stdout(io.StringIO()):  # the client prints its own links
            result = client.create_run_from_pipeline_package(
                package,
                arguments={"config_json": cfg.to_json()},
                run_name=opts.run_name or f"{cfg.name} {time.strftime('%Y-%m-%d %H-%M-%S')}",
                experiment_name=experiment,
                namespace=opts.namespace,
                pipeline_root=cluster.pipeline_root,
                enable_caching=enable_caching_override(opts.no_cache),
                service_account=cluster.service_account,
            )
    url = run_url(opts, result.run_id)
    print(f"submitted run {result.run_id} (experiment {experiment!r})\n{url}")
    final = (
        watch_run(client, result.run_id, opts.poll_interval_s, opts.watch_timeout_s)
        if opts.watch
        else None
    )
    return SubmitResult(result.run_id, url, experiment, final)


def _task_states(run: Any) -> dict[str, str]:
    details = getattr(run, "run_details", None)
    tasks = getattr(details, "task_details", None) or []
    return {t.display_name: str(t.state) for t in tasks if t.display_name and t.state}


def watch_run(client: Any, run_id: str, poll_interval_s: float, timeout_s: float = 0.0) -> str:
    """Poll the run, print run and task state changes; return the final state."""
    start = time.monotonic()
    seen: dict[str, str] = {}
    while True:
        run = client.get_run(run_id)
        state = str(run.state or "PENDING").upper()
        for name, task_state in sorted({"run": state, **_task_states(run)}.items()):
            if seen.get(name) != task_state:
                print(f"{time.strftime('%H:%M:%S')} {name}: {task_state}", flush=True)
                seen[name] = task_state
        if state in TERMINAL_STATES:
            return state
        if timeout_s and time.monotonic() - start > timeout_s:
            raise InputError(
                f"run {run_id} still {state} after --watch-timeout {timeout_s:.0f}s (it keeps running)"
            )
        time.sleep(poll_interval_s)


def exit_code(result: SubmitResult) -> int:
    return 0 if result.final_state in (None, "SUCCEEDED") else 1


def cmd_submit(args: argparse.Namespace) -> int:
    from coldstart.pipelines.pipeline import build_pipeline
    from coldstart.pipelines.preflight import preflight

    cfg = resolve_config(args.config, args.overrides)
    opts = server_options(args)

    def checks() -> None:
        check_host(opts.host)
        preflight(cfg, local=False)

    return exit_code(submit_pipeline(build_pipeline(cfg), cfg, opts, before_server=checks))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`submit`; `common` carries --config, --set and --verbose."""
    parser = sub.add_parser(
        "submit",
        parents=[common],
        help="start a run of the pipeline on a Kubeflow Pipelines server",
    )
    add_server_args(parser)
    parser.set_defaults(func=cmd_submit)
