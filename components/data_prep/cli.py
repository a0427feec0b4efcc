"""`python -m components.data_prep`: build the datasets (and the base model dir) outside kfp."""

from __future__ import annotations

import json
from pathlib import Path

from components.common.config import PipelineConfig
from components.common.stage_cli import config_from_args, default_run_id, stage_parser
from components.common.tracking import stage_run
from components.data_prep.base_model import prepare_base_model
from components.data_prep.stage import DataPrepOutputs, run_data_prep


def main(cfg: PipelineConfig, out: DataPrepOutputs, run_id: str) -> dict[str, float]:
    """The stage as the component and the shell both call it: datasets + MLflow logging."""
    cache = Path(cfg.output_dir).resolve() / "cache"
    with stage_run(cfg, "data_prep", run_id) as tracker:
        tracker.log_params({"data.source": cfg.data.source, "data.seed": cfg.data.seed})
        metrics = run_data_prep(cfg, out, cache)
        tracker.log_metrics(metrics)
    return metrics


def base_model_main(cfg: PipelineConfig, out_dir: Path) -> Path:
    return prepare_base_model(cfg, out_dir, Path(cfg.output_dir).resolve() / "cache")


def cli() -> int:
    parser = stage_parser("data_prep", "Build SFT, RL and eval datasets (HF save_to_disk folders).")
    parser.add_argument(
        "--output", required=True, help="folder that receives sft/, rl/, eval/ (and base_model/)"
    )
    parser.add_argument(
        "--with-base-model", action="store_true", help="also write the base model dir"
    )
    args = parser.parse_args()
    cfg = config_from_args(args)
    root = Path(args.output)
    metrics = main(
        cfg,
        DataPrepOutputs(root / "sft", root / "rl", root / "eval"),
        args.run_id or default_run_id(),
    )
    if args.with_base_model:
        base_model_main(cfg, root / "base_model")
    print(json.dumps(metrics, indent=2))
    return 0
