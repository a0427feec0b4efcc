"""Fixtures of the sft tests: the session's tiny model and synthetic SFT set, loaded once."""

from pathlib import Path

import datasets
import pytest

from coldstart.common.image_store import STORE_DIR, ImageStore
from coldstart.common.models import load_processor


@pytest.fixture(scope="session")
def processor(tiny_model_dir: Path):
    return load_processor(tiny_model_dir, 3136, 3136)


@pytest.fixture(scope="session")
def sft_dir(synthetic_data_dir: Path) -> Path:
    return synthetic_data_dir / "sft"


@pytest.fixture(scope="session")
def train_rows(sft_dir: Path) -> datasets.Dataset:
    """The train split with its images inline (datasets' `Image` feature), as a user's own set
    holds them: the checks and the collator see rows without an image store."""
    split = datasets.load_from_disk(str(sft_dir))["train"]
    store = ImageStore(sft_dir.parent / STORE_DIR)
    features = split.features.copy()
    features["images"] = datasets.List(datasets.Image())
    return split.map(
        lambda row: {"images": [store.encoded(key) for key in row["images"]]}, features=features
    )
