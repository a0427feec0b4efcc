"""`coldstart runs`: browse MLflow runs from the terminal.

- `coldstart runs list`            pipeline runs with their stages: status, duration, key metrics
- `coldstart runs show RUN`        params, metrics, artifacts (and the stages of a pipeline run)
- `coldstart runs compare RUN...`  eval score per benchmark side by side, config differences,
                                   reward curves overlaid in one PNG (`--plot`)
- `coldstart runs sync`            send logs a stage spilled while the server was down

RUN is a run id (or a unique prefix of one), a run name, or a kfp pipeline run id. The store and
experiment are the config's (`--config`, default configs/tiny.yaml) -- where `coldstart run`
with that config logged -- unless `--tracking-uri`, `--output-dir` or `--experiment` say
otherwise; without `--config`, the experiment is that of the newest pipeline run in the store.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from coldstart.common.errors import InputError

# The tags coldstart.common.tracking writes (repeated, not imported: that imports mlflow, and
# `coldstart --help` should not wait for it; tests/pipelines/test_runs_cli.py checks they agree).
ROLE = "coldstart.role"
STAGE = "coldstart.stage"
PIPELINE_RUN = "coldstart.pipeline_run_id"
CONFIG_HASH = "coldstart.config_hash"
REGISTERED = "coldstart.registered_model"
PARENT = "mlflow.parentRunId"
REWARD_KEYS = ("grpo/rewards/accuracy/mean", "grpo/reward/mean")
KEY_METRIC_PATTERNS = (  # what `runs list` shows, best first
    r"^eval/.+/average$",
    r"^grpo/rewards/accuracy/mean$",
    r"^grpo/reward/mean$",
    r"^sft/eval/loss$",
    r"^sft/train/loss$",
    r"^eval/.+/(score|accuracy)$",
    r"^data/.+_rows$",
    r"(^|/)loss$",
)
MAX_KEY_METRICS = 3


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add `runs` and its sub-commands; `common` carries --config, --set and --verbose."""
    store = argparse.ArgumentParser(add_help=False, parents=[common])
    store.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow server URL or store URI (default: the config's tracking.tracking_uri, else "
        "$MLFLOW_TRACKING_URI, else the local store under the config's output_dir)",
    )
    store.add_argument(
        "--output-dir",
        default=None,
        help="output_dir of a local `coldstart run` (default: the config's, e.g. outputs)",
    )
    store.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment (default: the config's tracking.experiment when --config or --set "
        "is given, else the experiment of the newest pipeline run in the store)",
    )
    runs = subparsers.add_parser("runs", help="browse MLflow runs: list, show, compare, sync")
    sub = runs.add_subparsers(dest="runs_command", required=True)

    p = sub.add_parser("list", parents=[store], help="pipeline runs with their stages")
    p.add_argument("--limit", type=int, default=20, help="newest N pipeline runs (default 20)")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("show", parents=[store], help="one run: params, metrics, artifacts")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--filter", default=None, help="only params/metrics whose name contains this")
    p.add_argument("--system", action="store_true", help="also list system/* metrics")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser(
        "compare", parents=[store], help="eval scores side by side, reward curves in one PNG"
    )
    p.add_argument("runs", metavar="RUN", nargs="+")
    p.add_argument(
        "--metric",
        default="score",
        help="per-benchmark eval metric to tabulate (default: score; falls back to accuracy)",
    )
    p.add_argument(
        "--plot", default=None, metavar="PNG", help="write the overlaid reward curves to this PNG"
    )
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser(
        "sync", parents=[store], help="send logs spilled while the tracking server was down"
    )
    p.add_argument(
        "--pending",
        default=None,
        help="spill folder (default: the config's, <output_dir>/mlflow/pending; s3:// allowed)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="give up on a spill after this many seconds of outage",
    )
    p.set_defaults(func=cmd_sync)


# --------------------------------------------------------------------------- store access


def store_config(args: argparse.Namespace) -> Any:
    from coldstart.common.stage_cli import resolve_config

    return resolve_config(args.config, args.overrides)


def config_tracking_uri(cfg: Any) -> str:
    """Where the stages of `cfg` log (their own precedence), without creating the local store."""
    from coldstart.common.tracking import local_store_dir

    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{local_store_dir(cfg) / 'mlflow.db'}"


def tracking_uri(args: argparse.Namespace) -> str:
    """--tracking-uri, else --output-dir's store, else where the config's runs log."""
    if args.tracking_uri:
        return args.tracking_uri
    if args.output_dir is None:
        uri = config_tracking_uri(store_config(args))
        if not uri.startswith("sqlite:///"):
            return uri
        db = Path(uri.removeprefix("sqlite:///"))
    else:
        db = Path(args.output_dir).resolve() / "mlflow" / "mlflow.db"
    if not db.exists():
        raise InputError(
            f"no local MLflow store at {db}: run `coldstart run` first, or pass --config / "
            "--output-dir of an earlier run, --tracking-uri, or set MLFLOW_TRACKING_URI"
        )
    return f"sqlite:///{db}"


def default_experiment(args: argparse.Namespace, client: Any) -> str:
    """The config's experiment when a config was named; else the newest pipeline run's."""
    cfg_experiment = store_config(args).tracking.experiment
    if args.config is not None or args.overrides:
        return cfg_experiment
    ids = [e.experiment_id for e in client.search_experiments()]
    newest = client.search_runs(
        ids,
        filter_string=f"tags.`{ROLE}` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return client.get_experiment(newest[0].info.experiment_id).name if newest else cfg_experiment


class Store:
    """The MLflow client with the lookups the commands share; errors become InputError."""

    def __init__(self, args: argparse.Namespace) -> None:
        from mlflow.tracking import MlflowClient

        from coldstart.common.tracking import limit_client_retries

        limit_client_retries()  # a down server fails in seconds, not minutes
        self.uri = tracking_uri(args)
        self.client = MlflowClient(self.uri)
        self.experiment_name = args.experiment or self.call(default_experiment, args, self.client)
        self._experiment_id: str | None = None

    def call(self, fn: Any, *a: Any, **kw: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*a, **kw)
        except MlflowException as exc:
            raise InputError(f"MLflow at {self.uri}: {' '.join(str(exc).split())[:400]}") from None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.call(self.client.get_experiment_by_name, self.experiment_name)
            if exp is None:
                names = [e.name for e in self.call(self.client.search_experiments)]
                raise InputError(
                    f"no experiment {self.experiment_name!r} at {self.uri}; there are: {names}"
                )
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    def search(self, filter_string: str = "", max_results: int = 1000) -> list[Any]:
        return self.call(
            self.client.search_runs,
            [self.experiment_id],
            filter_string=filter_string,
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )

    def children(self, run: Any) -> list[Any]:
        kids = self.call(
            self.client.search_runs,
            [run.info.experiment_id],
            filter_string=f"tags.`{PARENT}` = '{run.info.run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        return list(kids)

    def find(self, ref: str) -> Any:
        """A run by id, id prefix, name or kfp pipeline run id; an error names the candidates."""
        if re.fullmatch(r"[0-9a-f]{32}", ref):
            return self.call(self.client.get_run, ref)
        matches = self.search(f"attributes.run_name = '{ref}'") or self.search(
            f"tags.`{PIPELINE_RUN}` = '{ref}'"
        )
        if not matches and re.fullmatch(r"[0-9a-f]{4,31}", ref):
            matches = [r for r in self.search() if r.info.run_id.startswith(ref)]
        pipelines = [r for r in matches if r.data.tags.get(ROLE) == "pipeline"]
        matches = pipelines or matches
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise InputError(
                f"no run {ref!r} in experiment {self.experiment_name!r} at {self.uri} (try `coldstart runs list`)"
            )
        ids = ", ".join(f"{r.info.run_id[:12]} ({r.info.run_name})" for r in matches[:8])
        raise InputError(f"{ref!r} matches {len(matches)} runs: {ids}; give a run id")


# --------------------------------------------------------------------------- formatting


def console() -> Console:
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
    return Console(highlight=False, width=width)


def fmt_time(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else "-"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def fmt_value(value: float) -> str:
    return f"{value:.4g}"


def key_metrics(metrics: dict[str, float], limit: int = MAX_KEY_METRICS) -> str:
    chosen: list[str] = []
    for pattern in KEY_METRIC_PATTERNS:
        for key in sorted(metrics):
            if len(chosen) < limit and key not in chosen and re.search(pattern, key):
                chosen.append(key)
    return "  ".join(f"{k}={fmt_value(metrics[k])}" for k in chosen)


def pipeline_status(parent: Any, stages: list[Any]) -> str:
    statuses = {s.info.status for s in stages}
    for status in ("RUNNING", "FAILED", "KILLED"):
        if status in statuses:
            return status
    return "FINISHED" if stages else parent.info.status


def duration(run: Any, stages: Iterable[Any] = ()) -> str:
    stages = list(stages)
    runs = [run, *stages]
    start = min(r.info.start_time for r in runs if r.info.start_time)
    ends = [r.info.end_time for r in runs if r.info.end_time]
    running = any(r.info.status == "RUNNING" for r in (stages or [run]))
    end = time.time() * 1000 if running or not ends else max(ends)
    text = fmt_duration((end - start) / 1000)
    return f"{text} (running)" if running else text


def merged_metrics(runs: Iterable[Any]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for run in runs:
        merged.update(run.data.metrics)
    return merged


STATUS_STYLE = {"FINISHED": "green", "FAILED": "red", "KILLED": "red", "RUNNING": "yellow"}


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def label_runs(runs: list[Any]) -> list[str]:
    names = [r.info.run_name or r.info.run_id[:8] for r in runs]
    return [
        n if names.count(n) == 1 else f"{n} ({r.info.run_id[:8]})"
        for n, r in zip(names, runs, strict=True)
    ]


# --------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    store = Store(args)
    parents = store.search(f"tags.`{ROLE}` = 'pipeline'", max_results=args.limit)
    out = console()
    if not parents:
        out.print(f"no pipeline runs in experiment {store.experiment_name!r} at {store.uri}")
        return 0
    rows: list[tuple[str, str, str, str, str, str]] = []
    for parent in parents:
        stages = store.children(parent)
        rows.append((
            parent.info.run_name,
            parent.info.run_id[:12],
            styled(pipeline_status(parent, stages)),
            fmt_time(parent.info.start_time),
            duration(parent, stages),
            key_metrics(merged_metrics(stages)),
        ))  # fmt: skip
        for stage in stages:
            rows.append((
                f"  └ {stage.data.tags.get(STAGE, stage.info.run_name)}",
                stage.info.run_id[:12],
                styled(stage.info.status),
                fmt_time(stage.info.start_time),
                duration(stage),
                key_metrics(stage.data.metrics),
            ))  # fmt: skip
    table = Table(title=f"{store.experiment_name} @ {store.uri}", title_justify="left")
    for index, column in enumerate(("run", "id")):  # whole on any terminal: users copy them
        table.add_column(column, no_wrap=True, min_width=max(len(row[index]) for row in rows))
    for column in ("status", "started", "duration"):
        table.add_column(column, no_wrap=True)
    table.add_column("key metrics", overflow="fold")  # the first to give way
    for name, *rest in rows:
        table.add_row(f"[bold]{name}[/]" if not name.startswith(" ") else name, *rest)
    out.print(table)
    return 0


# --------------------------------------------------------------------------- show


def cmd_show(args: argparse.Namespace) -> int:
    store = Store(args)
    run = store.find(args.run)
    out = console()
    stages = store.children(run) if run.data.tags.get(ROLE) == "pipeline" else []
    out.print(_info_table(run, stages))
    if stages:
        out.print(_stages_table(stages))
    out.print(_params_table(run, args.filter))
    out.print(_metrics_table(store, run, args.filter, args.system))
    out.print(_artifacts_table(store, run))
    return 0


def _info_table(run: Any, stages: list[Any]) -> Table:
    tags = run.data.tags
    status = pipeline_status(run, stages) if stages else run.info.status
    table = Table(title=f"run {run.info.run_name}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("id", run.info.run_id),
        ("status", styled(status)),
        ("started", fmt_time(run.info.start_time)),
        ("duration", duration(run, stages)),
        ("role", tags.get(ROLE, "-")),
        ("stage", tags.get(STAGE, "-")),
        ("pipeline run", tags.get(PIPELINE_RUN, "-")),
        ("parent", tags.get(PARENT, "-")),
        ("config hash", tags.get(CONFIG_HASH, "-")),
        ("registered model", tags.get(REGISTERED, "-")),
        ("artifacts", run.info.artifact_uri),
    ]
    for name, value in rows:
        if value != "-":
            table.add_row(name, value)
    return table


def _stages_table(stages: list[Any]) -> Table:
    table = Table(title="stages", title_justify="left")
    for column in ("stage", "id", "status", "duration", "key metrics"):
        table.add_column(column, overflow="fold")
    for stage in stages:
        table.add_row(
            stage.data.tags.get(STAGE, stage.info.run_name),
            stage.info.run_id,
            styled(stage.info.status),
            duration(stage),
            key_metrics(stage.data.metrics),
        )
    return table


def _params_table(run: Any, needle: str | None) -> Table:
    params = {k: v for k, v in run.data.params.items() if not needle or needle in k}
    table = Table(title=f"params ({len(params)})", title_justify="left")
    table.add_column("param")
    table.add_column("value", overflow="fold")
    for key in sorted(params):
        table.add_row(key, params[key])
    return table


def _metrics_table(store: Store, run: Any, needle: str | None, system: bool) -> Table:
    keys = sorted(
        k
        for k in run.data.metrics
        if (system or not k.startswith("system/")) and (not needle or needle in k)
    )
    hidden = sum(k.startswith("system/") for k in run.data.metrics) if not system else 0
    note = f", {hidden} system/* hidden (--system)" if hidden else ""
    table = Table(title=f"metrics ({len(keys)}{note})", title_justify="left")
    for column, justify in (
        ("metric", "left"),
        ("last", "right"),
        ("step", "right"),
        ("points", "right"),
    ):
        table.add_column(column, justify=justify)
    for key in keys:
        history = store.call(store.client.get_metric_history, run.info.run_id, key)
        last = max(history, key=lambda m: (m.step, m.timestamp)) if history else None
        table.add_row(
            key,
            fmt_value(run.data.metrics[key]),
            str(last.step if last else "-"),
            str(len(history)),
        )
    return table


def _artifacts_table(store: Store, run: Any, max_entries: int = 200) -> Table:
    table = Table(title="artifacts", title_justify="left")
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right")
    pending = [None]
    shown = 0
    while pending and shown < max_entries:
        for item in store.call(store.client.list_artifacts, run.info.run_id, pending.pop(0)):
            if item.is_dir:
                pending.append(item.path)
            else:
                table.add_row(item.path, _fmt_size(item.file_size))
                shown += 1
    return table


def _fmt_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


# --------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> int:
    store = Store(args)
    runs = [store.find(ref) for ref in args.runs]
    labels = label_runs(runs)
    families = [[run, *store.children(run)] for run in runs]  # a pipeline run with its stages
    out = console()
    out.print(_eval_table(labels, [merged_metrics(f) for f in families], args.metric))
    diff = _config_diff(labels, runs)
    if diff is not None:
        out.print(diff)
    if args.plot:
        curves = {
            f"{label}:{name}": points
            for label, fam in zip(labels, families, strict=True)
            for name, points in reward_curves(store, fam).items()
        }
        if curves:
            plot_curves(curves, Path(args.plot))
            out.print(f"reward curves ({len(curves)}) written to {args.plot}")
        else:
            out.print(
                f"no reward curves ({' or '.join(REWARD_KEYS)}) in these runs; {args.plot} not written"
            )
    return 0


def eval_rows(metrics: dict[str, float], metric: str) -> dict[str, float]:
    """`eval/<model>/<benchmark>/<metric>` and `eval/<model>/average` -> {"<model>/<benchmark>": value}."""
    rows = {}
    for key, value in metrics.items():
        found = re.fullmatch(rf"eval/(.+)/({re.escape(metric)}|average)", key)
        if found:
            rows[found.group(1) if found.group(2) == metric else f"{found.group(1)}/average"] = (
                value
            )
    return rows


def _eval_table(labels: list[str], metrics: list[dict[str, float]], metric: str) -> Table:
    def per_benchmark(rows: dict[str, float]) -> bool:
        return any(not k.endswith("/average") for k in rows)

    per_run = [eval_rows(m, metric) for m in metrics]
    if metric == "score" and not any(
        per_benchmark(rows) for rows in per_run
    ):  # older eval: accuracy only
        metric, per_run = "accuracy", [eval_rows(m, "accuracy") for m in metrics]
    keys = sorted(
        {k for rows in per_run for k in rows},
        key=lambda k: (k.rsplit("/", 1)[0], k.endswith("/average"), k),
    )
    table = Table(title=f"eval {metric} (%)", title_justify="left")
    table.add_column("model / benchmark")
    for label in labels:
        table.add_column(label, justify="right", overflow="fold")
    if len(labels) == 2:
        table.add_column("Δ", justify="right")
    for key in keys:
        values = [rows.get(key) for rows in per_run]
        cells = ["-" if v is None else f"{100 * v:.1f}" for v in values]
        if len(labels) == 2:
            cells.append("-" if None in values else f"{100 * (values[1] - values[0]):+.1f}")
        table.add_row(key, *cells)
    if not keys:
        table.add_row(
            "(no eval/ metrics in these runs)", *["-"] * (len(labels) + (len(labels) == 2))
        )
    return table


def _config_diff(labels: list[str], runs: list[Any], limit: int = 40) -> Table | None:
    keys = sorted({k for r in runs for k in r.data.params})
    differing = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    if len(runs) < 2 or not differing:
        return None
    table = Table(title=f"params that differ ({len(differing)})", title_justify="left")
    table.add_column("param")
    for label in labels:
        table.add_column(label, overflow="fold")
    for key in differing[:limit]:
        table.add_row(key, *[r.data.params.get(key, "-") for r in runs])
    return table


def reward_curves(store: Store, runs: list[Any]) -> dict[str, list[tuple[int, float]]]:
    """{stage name: [(step, reward)]} for each run that logged one of REWARD_KEYS (first found)."""
    curves = {}
    for run in runs:
        key = next((k for k in REWARD_KEYS if k in run.data.metrics), None)
        if key is None:
            continue
        history = store.call(store.client.get_metric_history, run.info.run_id, key)
        points = sorted(
            {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}.items()
        )
        curves[run.data.tags.get(STAGE, run.info.run_name)] = points
    return curves


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in curves.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=label, marker="o" if len(points) < 30 else None, markersize=3)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward (accuracy) mean")
    ax.set_title("Reward curves")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------- sync


def cmd_sync(args: argparse.Namespace) -> int:
    from coldstart.common.tracking import limit_client_retries, replay_pending

    limit_client_retries()
    from coldstart.common.tracking import spill_root

    if args.pending:
        root = args.pending
    elif args.output_dir:
        root = str(Path(args.output_dir).resolve() / "mlflow" / "pending")
    else:
        root = spill_root(store_config(args))
    sent, left = replay_pending(root, outage_timeout_s=args.timeout)
    print(
        f"replayed {sent} spilled log buffer(s) from {root}; {left} left (server still unreachable)"
        if left
        else f"replayed {sent} spilled log buffer(s) from {root}"
    )
    return 1 if left else 0
