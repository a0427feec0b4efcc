"""What the end of `coldstart run` / `rerun --local` prints: scores, where things are, what next.

The scores are the first table of the eval report (the stage's own table, not re-derived here);
the paths come from the eval task's outputs, cached or not; the browse commands are built from
the same config the run used, so the very next command the user copies works as printed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from coldstart.common.config import PipelineConfig
from coldstart.pipelines.local_tasks import LocalRun


@dataclass(frozen=True)
class Invocation:
    """How the user named the config, so printed commands repeat it."""

    config: str | None  # --config as given (None: the default tiny.yaml)
    overrides: tuple[str, ...] = ()


def score_table(report: Path) -> str:
    """The report's first Markdown table, bold marks removed (a terminal shows `**` literally)."""
    lines = report.read_text(errors="replace").splitlines()
    table = []
    for line in lines:
        if line.startswith("|"):
            table.append(line.replace("**", ""))
        elif table:
            break
    return "\n".join(table)


def artifact_path(run: LocalRun, stage: str, output: str) -> Path | None:
    task = run.task(stage)
    artifact = task.outputs.get(output) if task else None
    path = getattr(artifact, "path", None)
    return Path(path) if path else None


def run_folder(run: LocalRun) -> Path | None:
    """kfp.local's folder of this run; for a run served wholly from the cache, the folder the
    cached eval outputs live in."""
    if run.run_dir is not None:
        return run.run_dir
    for task in reversed(run.tasks):
        for artifact in task.outputs.values():
            path = getattr(artifact, "path", None)
            if path:
                return Path(path).parent.parent
    return None


def runs_flags(cfg: PipelineConfig, how: Invocation, tracking_uri: str) -> str:
    """The flags `coldstart runs` needs to find this run's store and experiment.

    None when its defaults (configs/tiny.yaml's store, the newest run's experiment) already
    point there; `--config FILE` when the file alone says it; else the explicit store.
    """
    from coldstart.common.stage_cli import resolve_config
    from coldstart.pipelines.runs import config_tracking_uri

    if how.config is not None and not how.overrides:
        return f" --config {shlex.quote(how.config)}"
    if tracking_uri == config_tracking_uri(resolve_config(None)):
        return ""
    return f" --tracking-uri {shlex.quote(tracking_uri)} --experiment {shlex.quote(cfg.tracking.experiment)}"


def describe(cfg: PipelineConfig, run: LocalRun, how: Invocation, seconds: float) -> str:
    """The lines printed after a successful local run."""
    from coldstart.common.tracking import resolve_tracking_uri

    counts = {s: sum(t.status == s for t in run.tasks) for s in ("done", "cached")}
    lines = [
        f"\n{cfg.name} finished in {seconds:.0f}s "
        f"({counts['done']} stages run, {counts['cached']} from the cache)"
    ]
    report = artifact_path(run, "eval", "report")
    if report is not None and report.exists():
        lines += ["", score_table(report), ""]
    folder = run_folder(run)
    tracking = resolve_tracking_uri(cfg)
    rows = [
        ("run folder", folder),
        ("report", report),
        ("chart", artifact_path(run, "eval", "chart")),
        ("logs", run.log_dir),
        ("MLflow", f"{tracking} (experiment {cfg.tracking.experiment})"),
    ]
    lines += [f"{name + ':':<12}{value}" for name, value in rows if value is not None]
    flags = runs_flags(cfg, how, tracking)
    ran = counts["done"] > 0 and run.pipeline_run_id
    show = f"coldstart runs show {run.pipeline_run_id}" if ran else "coldstart runs list"
    lines += ["", "browse:", f"  {show}{flags}"]
    if tracking.startswith("sqlite:") or "://" not in tracking:
        lines.append(f"  mlflow ui --backend-store-uri {shlex.quote(tracking)}")
    else:
        lines.append(f"  open {tracking}")
    return "\n".join(lines)
