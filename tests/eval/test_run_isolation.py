"""No state crosses runs (issue 26): two experiments evaluated into one output_dir each report
exactly what they report in a fresh folder, locally and on s3, and an eval of another model
under the same run never takes the old responses.

The stages are called as their kfp component calls them: `pipeline_run_id=''`, the run in
`KFP_RUN_ID` (what kfp.local and the cluster's pod label give).
"""

from __future__ import annotations

import pandas as pd
import pytest

from coldstart.common.config import TinyModelConfig
from coldstart.common.tiny_model import build_tiny_model
from coldstart.eval.cli import main
from tests.conftest import tiny_config

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two tiny models of different weights: experiment A's and experiment B's."""
    root = tmp_path_factory.mktemp("two-models")
    return tuple(
        str(build_tiny_model(root / name, TinyModelConfig(seed=seed), 3136, 3136))
        for name, seed in (("a", 1), ("b", 2))
    )


def _config(output_dir: str, tmp_path):
    cfg = tiny_config(
        tmp_path,
        eval={
            "max_new_tokens": 8,
            "batch_size": 2,
            "benchmarks": [{"name": "synthetic", "limit": 4}],
        },
    )
    return cfg.model_copy(update={"output_dir": output_dir})


def _evaluate(cfg, model: str, data_dir, out, run: str, monkeypatch) -> pd.DataFrame:
    """eval as its component runs it, then the responses it reported."""
    monkeypatch.setenv("KFP_RUN_ID", run)
    main(cfg, {"SFT+RL": model}, data_dir / "eval", out, "", images_dir=data_dir / "images")
    table = pd.read_parquet(out / "predictions" / "predictions.parquet")
    return table[["id", "response", "correct"]].reset_index(drop=True)


def _two_experiments(shared: str, fresh: str, tmp_path, two_models, data_dir, monkeypatch):
    model_a, model_b = two_models
    a = _evaluate(
        _config(shared, tmp_path), model_a, data_dir, tmp_path / "a", "run-a", monkeypatch
    )
    b = _evaluate(
        _config(shared, tmp_path), model_b, data_dir, tmp_path / "b", "run-b", monkeypatch
    )
    alone = _evaluate(
        _config(fresh, tmp_path), model_b, data_dir, tmp_path / "alone", "run-b", monkeypatch
    )
    assert not a["response"].equals(alone["response"])  # the two experiments differ
    pd.testing.assert_frame_equal(b, alone)


def test_two_experiments_in_one_local_output_dir(
    tmp_path, two_models, synthetic_data_dir, monkeypatch
):
    shared, fresh = str(tmp_path / "shared"), str(tmp_path / "fresh")
    _two_experiments(shared, fresh, tmp_path, two_models, synthetic_data_dir, monkeypatch)


def test_two_experiments_in_one_s3_output_dir(
    tmp_path, two_models, synthetic_data_dir, s3_env, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the no-server MLflow store of an s3 output_dir: ./outputs
    shared, fresh = s3_env.uri("shared/runs"), s3_env.uri("fresh/runs")
    _two_experiments(shared, fresh, tmp_path, two_models, synthetic_data_dir, monkeypatch)


def test_another_model_under_the_same_run_is_generated_anew(
    tmp_path, two_models, synthetic_data_dir, monkeypatch
):
    """`coldstart rerun eval` of a retrained model, or a retried run whose model changed: the same
    run id, the same display name, other weights."""
    model_a, model_b = two_models
    cfg = _config(str(tmp_path / "shared"), tmp_path)
    data = synthetic_data_dir
    _evaluate(cfg, model_a, data, tmp_path / "a", "run-x", monkeypatch)
    b = _evaluate(cfg, model_b, data, tmp_path / "b", "run-x", monkeypatch)
    fresh = _config(str(tmp_path / "fresh"), tmp_path)
    alone = _evaluate(fresh, model_b, data, tmp_path / "alone", "run-x", monkeypatch)
    pd.testing.assert_frame_equal(b, alone)


def test_a_component_without_a_run_id_is_refused(
    tmp_path, two_models, synthetic_data_dir, monkeypatch
):
    from coldstart.common.errors import InputError

    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    cfg = _config(str(tmp_path / "out"), tmp_path)
    with pytest.raises(InputError, match="no pipeline run id"):
        main(cfg, {"base": two_models[0]}, synthetic_data_dir / "eval", tmp_path / "o", "")
