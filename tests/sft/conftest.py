"""Fixtures of the sft tests: the session's tiny model and synthetic SFT set, loaded once."""

from pathlib import Path

import datasets
import pytest

from coldstart.common.models import load_processor


@pytest.fixture(scope="session")
def processor(tiny_model_dir: Path):
    return load_processor(tiny_model_dir, 3136, 3136)


@pytest.fixture(scope="session")
def sft_dir(synthetic_data_dir: Path) -> Path:
    return synthetic_data_dir / "sft"


@pytest.fixture(scope="session")
def train_rows(sft_dir: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(sft_dir))["train"]
