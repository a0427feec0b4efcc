"""The shared stage runner's pure parts: where a run's checkpoints live, and the run id they need."""

from __future__ import annotations

from pathlib import Path

import pytest

from coldstart.common.config import load_config
from coldstart.common.errors import InputError
from coldstart.common.run_id import require_run_id
from coldstart.common.stage_runner import StageRequest, checkpoint_root, training_digest

ROOT = Path(__file__).resolve().parents[2]


def _request(output: str, run_id: str, run_name: str = "grpo") -> StageRequest:
    return StageRequest("grpo", {"data": "/d"}, output, run_id, run_name, digest="-")


@pytest.mark.parametrize(
    ("output_dir", "output", "expected"),
    [
        ("outputs", "/art/model", "/art/model/checkpoints/run-1"),
        ("s3://b/root", "s3://b/out", "s3://b/out/checkpoints/run-1"),
        # a pod's local artifact folder: the checkpoints go where a new pod finds them
        ("s3://b/root", "/art/model", "s3://b/root/run-1/grpo_from_base/checkpoints"),
    ],
)
def test_checkpoints_are_under_the_run(output_dir, output, expected, monkeypatch):
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={output_dir}"])
    assert checkpoint_root(cfg, _request(output, "run-1", "grpo_from_base")) == expected


def test_an_empty_run_id_is_an_error_or_kfp_run_id(monkeypatch):
    """`pipeline_run_id=""` once gave `s3://b/run1//sft/checkpoints`, shared by every run."""
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["output_dir=s3://b/run1"])
    with pytest.raises(InputError, match="no pipeline run id"):
        checkpoint_root(cfg, _request("/art/model", ""))
    monkeypatch.setenv("KFP_RUN_ID", "kfp-42")
    assert checkpoint_root(cfg, _request("/art/model", "")) == "s3://b/run1/kfp-42/grpo/checkpoints"
    assert require_run_id("given") == "given"
    with pytest.raises(InputError, match="must not contain"):
        require_run_id("a/b")


def test_digest_follows_the_training_settings_only():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [])
    same = load_config(
        ROOT / "configs" / "tiny.yaml", ["output_dir=elsewhere", "tracking.experiment=x"]
    )
    other = load_config(ROOT / "configs" / "tiny.yaml", ["grpo.learning_rate=0.5"])
    assert training_digest(cfg, "grpo") == training_digest(same, "grpo")
    assert training_digest(cfg, "grpo") != training_digest(other, "grpo")
