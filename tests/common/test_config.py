"""Config: the shipped files validate, overrides apply, bad values name the field and range."""

from pathlib import Path

import pytest

from coldstart.common.config import (
    PAPER_SYSTEM_PROMPT,
    ConfigError,
    flatten,
    load_config,
    parse_override,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["tiny", "qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.sft.system_prompt == PAPER_SYSTEM_PROMPT


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_paper_recipe_values(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    s, g = cfg.sft, cfg.grpo
    assert (
        s.learning_rate,
        s.lr_scheduler_type,
        s.weight_decay,
        s.adam_beta2,
        s.num_train_epochs,
    ) == (1e-5, "cosine", 0.1, 0.95, 3)
    assert (
        s.global_batch_size,
        s.deepspeed,
        s.bf16,
        s.gradient_checkpointing,
        s.freeze_vision_tower,
    ) == (64, "zero2", True, True, True)
    assert (
        cfg.data.max_pixels == 1_204_224
        and s.train_merger
        and cfg.data.sft_holdout_fraction == 0.01
    )
    assert (
        g.num_generations,
        g.temperature,
        g.top_p,
        g.rollout_batch_size,
        g.update_batch_size,
    ) == (10, 0.7, 0.99, 512, 128)
    assert (g.learning_rate, g.lr_scheduler_type, g.weight_decay) == (1e-6, "constant", 1e-2)
    assert (g.clip_ratio_low, g.clip_ratio_high, g.clip_ratio_dual, g.loss_agg_mode) == (
        0.2,
        0.3,
        3.0,
        "token-mean",
    )
    assert (g.kl_coef, g.kl_estimator, g.max_grad_norm, g.advantage_eps) == (1e-2, "k3", 1.0, 1e-6)
    assert (g.max_prompt_length, g.max_completion_length, g.min_pixels, g.max_pixels) == (
        2048,
        2048,
        262_144,
        1_204_224,
    )
    assert g.freeze_vision_tower is False and g.reward_weights == {"accuracy": 1.0}


def test_override_applies_and_parses_yaml_scalars():
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        ["sft.learning_rate=2e-5", "grpo.kl_coef=0", "data.skip_invalid=true"],
    )
    assert cfg.sft.learning_rate == 2e-5 and cfg.grpo.kl_coef == 0 and cfg.data.skip_invalid is True
    assert parse_override("eval.benchmarks=[{name: synthetic}]")[1] == [{"name": "synthetic"}]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("sft.learning_rate=-1", "sft.learning_rate: Input should be greater than 0"),
        ("grpo.top_p=1.5", "grpo.top_p: Input should be less than or equal to 1"),
        (
            "grpo.num_generations=1",
            "grpo.num_generations: Input should be greater than or equal to 2",
        ),
        ("grpo.loss_agg_mode=mean", "grpo.loss_agg_mode: Input should be 'token-mean'"),
        ("sft.learnin_rate=1", "sft.learnin_rate: Extra inputs are not permitted"),
        ("data.synthetic.families=[dogs]", "unknown families ['dogs']"),
        ("grpo.update_batch_size=100", "must be a multiple of update_batch_size"),
        ("data.min_pixels=99999", "min_pixels (99999) must be <= max_pixels"),
        (
            "data.synthetic.teacher_slip=1.5",
            "data.synthetic.teacher_slip: Input should be less than or equal to 1",
        ),
        ("tracking.tracking_uri=file:///tmp/mlruns", "tracking.tracking_uri: Value error, 'file:"),
        ("tracking.tracking_uri=./mlruns", "MLflow 3 no longer writes to; use a database (sqlite"),
    ],
)
def test_bad_values_name_field_and_range(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", [override])
    assert needle in str(err.value)
    assert "tiny.yaml" in str(err.value)


def test_bad_files_and_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["sft.learning_rate"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["name=x", "name.sub=1"])


def test_flatten_and_digest_are_stable():
    a, b = load_config(CONFIGS / "tiny.yaml"), load_config(CONFIGS / "tiny.yaml")
    assert a.digest() == b.digest()
    assert a.digest() != load_config(CONFIGS / "tiny.yaml", ["sft.seed=1"]).digest()
    flat = flatten(a)
    assert (
        flat["sft.learning_rate"] == a.sft.learning_rate and flat["data.synthetic.image_size"] == 56
    )


def test_a_file_store_in_the_environment_is_refused_naming_the_variable(monkeypatch):
    """MLflow 3 takes no new runs in a file store: a stage would only spill and wait."""
    from coldstart.common import settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    with pytest.raises(ValueError, match=r"MLFLOW_TRACKING_URI='mlruns'.*sqlite:///"):
        settings.read(settings.TrackingSettings)
    for good in ("sqlite:///tmp/mlflow.db", "http://127.0.0.1:5000", "databricks"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", good)
        assert settings.read(settings.TrackingSettings).tracking_uri == good
