"""Tiny model + RL set, built once per test session (a few seconds), and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from coldstart.common.config import GRPOConfig, PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_config(*overrides: str) -> PipelineConfig:
    return load_config(TINY_CONFIG, list(overrides))


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    """{'model': tiny Qwen2.5-VL dir, 'rl': RL dataset dir} from the tiny config (32 rows per family)."""
    from coldstart.common.tiny_model import build_tiny_model
    from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep

    root = tmp_path_factory.mktemp("grpo_assets")
    cfg = tiny_config("data.synthetic.train_per_family=32", "data.synthetic.test_per_family=4")
    run_data_prep(cfg, DataPrepOutputs.under(root), root / "cache")
    build_tiny_model(root / "model", cfg.model.tiny, cfg.data.min_pixels, cfg.data.max_pixels)
    return {"model": root / "model", "rl": root / "rl"}


@pytest.fixture
def tiny_policy(tiny_assets):
    from coldstart.common.models import load_model, load_processor

    torch.manual_seed(0)
    cfg = GRPOConfig()
    return load_model(tiny_assets["model"]), load_processor(tiny_assets["model"], 3136, 3136), cfg
