"""Shared fixtures: offline hub, a tiny model and a small synthetic data set built once per session."""

import builtins
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests pick their own store
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per pytest worker (and per process it starts): with one worker per CPU,
    # torch's default of one thread per CPU in every worker made OpenMP threads spin against
    # each other (a 30 s learning test took 370 s).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import yaml

from coldstart.common.config import PipelineConfig, config_from_dict

pytest_plugins = ["tests.servers"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (in their order, then the rest in theirs): spread over pytest-xdist's
    workers, the minutes-long runs start at once and the short tests fill the gaps, instead of
    one worker finishing a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def print_is_left_alone():
    """A test that leaves ``builtins.print`` swapped (kfp.local's indenting print, see
    caching.run_local_pipeline) would indent every later test's output: fail it instead."""
    original = builtins.print
    yield
    swapped, builtins.print = builtins.print is not original, original
    assert not swapped, "builtins.print was left swapped (by kfp.local?)"


TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def tiny_config(tmp: Path, **sections) -> PipelineConfig:
    """configs/tiny.yaml with fewer problems, output under `tmp`; `sections` replace top-level keys."""
    data = yaml.safe_load(TINY_YAML.read_text())
    data["output_dir"] = str(tmp / "outputs")
    data["data"]["synthetic"].update(
        {"train_per_family": 12, "test_per_family": 4, "image_size": 56}
    )
    data["data"].update({"min_pixels": 3136, "max_pixels": 3136, "sft_holdout_fraction": 0.1})
    data.update(sections)
    return config_from_dict(data, "test")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from coldstart.common.config import TinyModelConfig
    from coldstart.common.tiny_model import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model", TinyModelConfig(), 3136, 3136
    )


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """data_prep output (sft/, rl/, eval/) from the synthetic generator, without MLflow."""
    from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep

    root = tmp_path_factory.mktemp("data")
    cfg = tiny_config(root)
    run_data_prep(cfg, DataPrepOutputs.under(root), root / "cache")
    return root
