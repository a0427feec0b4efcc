"""The Python API: what `coldstart run` does, callable from a notebook or a script.

    from coldstart.pipelines.api import run_pipeline
    result = run_pipeline("configs/tiny.yaml", overrides=["grpo.total_steps=5"])
    print(result.scores_table, result.report)

The same config resolution, preflight and local run as the CLI; errors are raised, not printed
(`InputError` for bad input, `TaskFailed` with `.stage` and `.log` for a failed stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coldstart.common.config import PipelineConfig
from coldstart.common.stage_cli import resolve_config
from coldstart.pipelines.local_tasks import LocalRun


@dataclass(frozen=True)
class PipelineResult:
    """Where a finished local run left its results."""

    config: PipelineConfig
    run: LocalRun
    run_folder: Path | None
    report: Path | None
    chart: Path | None
    scores_table: str  # the report's score table (Markdown), "" without eval
    tracking_uri: str


def run_pipeline(
    config: str | Path | PipelineConfig | None = None,
    overrides: list[str] | None = None,
    cache: bool = True,
    verbose: bool = False,
) -> PipelineResult:
    """Run the whole pipeline locally (kfp.local); `config` is a YAML path, a config or None
    (configs/tiny.yaml)."""
    from coldstart.common.config import apply_overrides, config_from_dict
    from coldstart.common.tracking import resolve_tracking_uri
    from coldstart.pipelines.local import run_local
    from coldstart.pipelines.preflight import preflight
    from coldstart.pipelines.run_summary import artifact_path, run_folder, score_table

    if isinstance(config, PipelineConfig):
        data = apply_overrides(config.model_dump(mode="json"), overrides or [])
        cfg = config_from_dict(data, "run_pipeline")
    else:
        cfg = resolve_config(config, overrides)
    preflight(cfg, local=True)
    run = run_local(cfg, cache=cache, verbose=verbose)
    report = artifact_path(run, "eval", "report")
    return PipelineResult(
        config=cfg,
        run=run,
        run_folder=run_folder(run),
        report=report,
        chart=artifact_path(run, "eval", "chart"),
        scores_table=score_table(report) if report and report.exists() else "",
        tracking_uri=resolve_tracking_uri(cfg),
    )
