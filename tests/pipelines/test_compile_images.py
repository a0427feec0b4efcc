"""compile/submit refuse images a run could not reproduce: `latest` or no tag (pipelines/compile.py)."""

from pathlib import Path

import pytest

from coldstart.pipelines.cli import main
from coldstart.pipelines.compile import image_tag, mutable_images

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("ghcr.io/coldstart/coldstart-train:latest", "latest"),
        ("ghcr.io/coldstart/coldstart-train", None),
        ("localhost:5000/coldstart-train", None),  # a registry port is no tag
        ("localhost:5000/coldstart-train:abc123", "abc123"),
        ("ghcr.io/x/y@sha256:" + "0" * 64, ""),
    ],
)
def test_image_tag(image, tag):
    assert image_tag(image) == tag


def test_mutable_images_are_latest_and_untagged_only():
    images = {"a": "r/x:latest", "b": "r/x", "c": "r/x:v1", "d": "r/x@sha256:" + "1" * 64}
    assert mutable_images(images) == {"a": "r/x:latest", "b": "r/x"}


def test_compile_refuses_the_unset_tag_and_names_the_tasks_and_the_fix(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("COLDSTART_IMAGE_TAG")
    out = tmp_path / "p.yaml"
    assert main(["compile", "--config", str(CONFIGS / "tiny.yaml"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exec-sft-op: ghcr.io/coldstart/coldstart-train:latest" in err
    assert "--image-tag" in err and not out.exists()


def test_image_tag_flag_sets_every_task_image_and_warns_on_the_default_registry(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("COLDSTART_IMAGE_TAG")
    out = tmp_path / "p.yaml"
    args = ["compile", "--config", str(CONFIGS / "tiny.yaml"), "--output", str(out)]
    assert main([*args, "--image-tag", "0a1b2c3d4e5f"]) == 0
    text = out.read_text()
    assert ":latest" not in text and "coldstart-train:0a1b2c3d4e5f" in text
    assert "default registry ghcr.io/coldstart" in capsys.readouterr().err
    assert main([*args, "--image-tag", "latest"]) == 2


def test_a_stage_image_override_with_latest_is_refused(tmp_path):
    out = tmp_path / "p.yaml"
    args = ["compile", "--config", str(CONFIGS / "tiny.yaml"), "--output", str(out)]
    assert main([*args, "--set", "cluster.resources.eval.image=mine/eval:latest"]) == 2


def test_submit_refuses_before_creating_a_run(monkeypatch, capsys):
    """No server is reachable at this address: the refusal must come first."""
    monkeypatch.delenv("COLDSTART_IMAGE_TAG")
    rc = main(["submit", "--host", "http://127.0.0.1:9", "--config", str(CONFIGS / "tiny.yaml")])
    assert rc == 2 and "mutable tag" in capsys.readouterr().err
