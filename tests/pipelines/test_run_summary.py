"""The end of a local run: the score table from the report, and browse commands whose flags find
the run's store (the end-to-end check is tests/pipelines/test_local_run.py)."""

from pathlib import Path

from coldstart.common.stage_cli import resolve_config
from coldstart.pipelines.run_summary import Invocation, runs_flags, score_table
from coldstart.pipelines.runs import config_tracking_uri


def test_score_table_is_the_reports_first_table_without_bold(tmp_path):
    report = tmp_path / "report.md"
    report.write_text(
        "# Evaluation\n\nScores in %.\n\n| Model | Synthetic | Avg. |\n|---|---:|---:|\n"
        "| base | 0.0 | 0.0 |\n| SFT | **9.4** | **9.4** |\n\n## Details\n\n| n | 64 |\n"
    )
    assert score_table(report).splitlines() == [
        "| Model | Synthetic | Avg. |",
        "|---|---:|---:|",
        "| base | 0.0 | 0.0 |",
        "| SFT | 9.4 | 9.4 |",
    ]


def test_browse_flags_repeat_only_what_coldstart_runs_would_not_find(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = resolve_config(None)  # configs/tiny.yaml: ./outputs
    uri = config_tracking_uri(default)
    assert runs_flags(default, Invocation(None), uri) == ""  # `make run`'s case: no flags
    assert runs_flags(default, Invocation("my.yaml"), uri) == " --config my.yaml"
    moved = resolve_config(None, ["output_dir=elsewhere"])
    flags = runs_flags(moved, Invocation(None, ("output_dir=elsewhere",)), "sqlite:///x/y.db")
    assert flags == " --tracking-uri sqlite:///x/y.db --experiment coldstart-tiny"
    assert not Path("outputs").exists()  # working out the flags creates nothing
