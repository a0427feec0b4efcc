"""Persisted state keyed by what made it (issue 26): local copies of s3 prefixes are mirrors, an s3
model output holds one model, the tiny preset is cached by its settings."""

from __future__ import annotations

import json

from coldstart.common import storage
from coldstart.common.config import ModelConfig, TinyModelConfig
from coldstart.common.models import resolve_model_dir
from coldstart.common.stage_runner import CHECKPOINTS, RESULT_FILE, upload_output


def _folder(path, files: dict[str, bytes]):
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def test_a_downloaded_prefix_drops_what_the_store_no_longer_holds(tmp_path, s3_env):
    uri = s3_env.uri("models/m")
    first = _folder(tmp_path / "v1", {"config.json": b"{}", "model-00001.safetensors": b"1"})
    storage.sync_up(first, uri)
    local = storage.materialize(uri, tmp_path / "cache")
    assert (local / "model-00001.safetensors").exists()
    storage.delete(uri)  # the model re-saved in one shard
    storage.sync_up(
        _folder(tmp_path / "v2", {"config.json": b"{}", "model.safetensors": b"2"}), uri
    )
    assert storage.materialize(uri, tmp_path / "cache") == local
    assert sorted(p.name for p in local.iterdir()) == ["config.json", "model.safetensors"]


def test_an_s3_output_holds_only_the_last_model_and_its_checkpoints(tmp_path, s3_env):
    out = s3_env.uri("runs/sft")
    old = _folder(
        tmp_path / "old",
        {"model.safetensors": b"old", "adapter_config.json": b"{}", RESULT_FILE: b"{}"},
    )
    upload_output(old, out)
    storage.write_text(storage.join(out, CHECKPOINTS, "run-1", "x"), "kept")
    new = _folder(tmp_path / "new", {"model-00001.safetensors": b"new", RESULT_FILE: b'{"a": 1}'})
    upload_output(new, out)
    names = {uri.removeprefix(out + "/") for uri in storage.list_prefix(out)}
    assert names == {"model-00001.safetensors", RESULT_FILE, f"{CHECKPOINTS}/run-1/x"}
    assert json.loads(storage.read_text(storage.join(out, RESULT_FILE))) == {"a": 1}


def test_the_tiny_preset_is_cached_by_its_settings(tmp_path):
    def tiny(seed: int, pixels: int = 3136):
        model = ModelConfig(name_or_path="tiny", tiny=TinyModelConfig(seed=seed))
        return resolve_model_dir(model, tmp_path, pixels, pixels)

    first = tiny(0)
    assert tiny(0) == first  # built once
    assert tiny(1) != first and tiny(0, 6272) != first  # another seed or pixel bound: another model
    assert not list(tmp_path.glob(".building-*"))  # built aside, moved into place whole
