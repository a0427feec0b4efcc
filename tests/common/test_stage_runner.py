"""The shared stage runner's pure parts: where a run's checkpoints live, and the run id they need."""

from __future__ import annotations

from pathlib import Path

import pytest

from coldstart.common.config import load_config
from coldstart.common.errors import InputError
from coldstart.common.run_id import require_run_id
from coldstart.common.stage_runner import (
    StageRequest,
    checkpoint_root,
    claim_checkpoints,
    inputs_digest,
    training_digest,
)

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


def test_the_digest_follows_the_inputs_bytes(tmp_path):
    """A retrained model or new data at the same path is another training (issue 26)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.arrow").write_bytes(b"first")
    first = inputs_digest({"sft-data": str(data)})
    (data / "cache-0123.arrow").write_bytes(b"a reader's map cache")  # not content
    assert inputs_digest({"sft-data": str(data)}) == first
    (data / "rows.arrow").write_bytes(b"other")
    second = inputs_digest({"sft-data": str(data)})
    assert second != first
    (data / "checkpoints").mkdir()  # a model folder's checkpoints are not the model
    (data / "checkpoints" / "step").write_bytes(b"x")
    assert inputs_digest({"sft-data": str(data)}) == second


@pytest.mark.parametrize("root", ["local", "s3"])
def test_checkpoints_of_a_training_on_other_inputs_are_refused(root, tmp_path, request):
    """The same run id on other inputs never resumes the first one's weights."""
    if root == "s3":
        root = request.getfixturevalue("s3_env").uri("out/checkpoints/run-1")
    else:
        root = str(tmp_path / "checkpoints" / "run-1")
    claim_checkpoints(root, "aaaa")
    claim_checkpoints(root, "aaaa")  # the same training (a retried pod): resumes
    with pytest.raises(InputError, match="a training on other inputs under this run id"):
        claim_checkpoints(root, "bbbb")
