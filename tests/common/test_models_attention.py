"""The attention kernel a config asks for is checked against what is installed, before any load.

The paper configs once asked for flash_attention_2 while the default train image has no
flash-attn: SFT failed inside `from_pretrained`, three times with retries, on 8-GPU nodes.
"""

from pathlib import Path

import pytest

from coldstart.common.config import load_config
from coldstart.common.models import ModelLoadError, check_attn_implementation, load_model
from tests.deploy.manifests import DOCKER, arg_defaults, dockerfile, parse_dockerfile

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_flash_attention_without_flash_attn_is_refused_before_reading_the_model(tmp_path):
    pytest.importorskip("transformers")
    from importlib.util import find_spec

    if find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here: the refusal cannot be observed")
    # An empty directory: the attention check must come first, not the missing config.json.
    with pytest.raises(
        ModelLoadError, match=r"flash-attn package is not installed.*sdpa.*FLASH_ATTN=1"
    ):
        load_model(tmp_path, "float32", "flash_attention_2")


@pytest.mark.parametrize("name", ["sdpa", "eager"])
def test_torch_kernels_pass(name):
    check_attn_implementation(name)


def test_unknown_kernel_is_named():
    with pytest.raises(ModelLoadError, match=r"'flash_attention_3'.*valid"):
        check_attn_implementation("flash_attention_3")


def _default_image_has_flash_attn() -> bool:
    train = arg_defaults(parse_dockerfile(dockerfile("train")))
    build_sh = (DOCKER / "build.sh").read_text()
    return train.get("FLASH_ATTN") == "1" or "FLASH_ATTN=${FLASH_ATTN:-1}" in build_sh


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_runs_in_the_default_image(config):
    """A config of configs/ asks only for an attention kernel the default train image has."""
    cfg = load_config(CONFIGS / config)
    if cfg.model.attn_implementation == "flash_attention_2":
        assert _default_image_has_flash_attn(), (
            f"configs/{config}: flash_attention_2, but docker/ builds the train image without "
            "flash-attn by default (FLASH_ATTN=0)"
        )
