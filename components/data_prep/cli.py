"""`python -m coldstart.data_prep`: build the datasets (and the base model dir) outside kfp."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from coldstart.common.config import PipelineConfig
from coldstart.common.stage_cli import config_from_args, default_run_id, stage_parser
from coldstart.common.storage import local_cache_dir
from coldstart.common.tracking import stage_run
from coldstart.data_prep.base_model import prepare_base_model
from coldstart.data_prep.shard import prepare_shard
from coldstart.data_prep.stage import DataPrepOutputs, merge_shards, run_data_prep


def _cache(cfg: PipelineConfig) -> Path:
    return local_cache_dir(cfg.output_dir)


def main(cfg: PipelineConfig, out: DataPrepOutputs, run_id: str) -> dict[str, float]:
    """The stage as the component and the shell both call it: datasets + MLflow logging."""
    return _tracked(cfg, run_id, lambda: run_data_prep(cfg, out, _cache(cfg)))


def shard_main(cfg: PipelineConfig, shard: int, shard_dir: Path) -> dict[str, int]:
    """One shard of a sharded run: its share of the input files, prepared into `shard_dir`."""
    return prepare_shard(cfg.data, shard, cfg.data.shards, shard_dir, _cache(cfg))


def merge_main(
    cfg: PipelineConfig, shard_dirs: list[Path], out: DataPrepOutputs, run_id: str
) -> dict[str, float]:
    """The merge of a sharded run: the final datasets from every shard's parts, logged."""
    return _tracked(cfg, run_id, lambda: merge_shards(cfg, shard_dirs, out, _cache(cfg)))


def _tracked(
    cfg: PipelineConfig, run_id: str, build: Callable[[], dict[str, float]]
) -> dict[str, float]:
    with stage_run(cfg, "data_prep", run_id) as tracker:
        tracker.log_params({"data.source": cfg.data.source, "data.seed": cfg.data.seed})
        metrics = build()
        tracker.log_metrics(metrics)
    return metrics


def base_model_main(cfg: PipelineConfig, out_dir: Path) -> Path:
    return prepare_base_model(cfg, out_dir, _cache(cfg))


def cli() -> int:
    parser = stage_parser("data_prep", "Build SFT, RL and eval datasets (HF save_to_disk folders).")
    parser.add_argument(
        "--output",
        required=True,
        help="folder that receives sft/, rl/, eval/, images/ (and base_model/)",
    )
    parser.add_argument(
        "--with-base-model", action="store_true", help="also write the base model dir"
    )
    parser.add_argument(
        "--shard",
        type=int,
        default=None,
        metavar="K",
        help="prepare only shard K of data.shards into --output (the merge is --merge-shards)",
    )
    parser.add_argument(
        "--merge-shards",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="merge the given shard folders into sft/, rl/, eval/, images/ under --output",
    )
    args = parser.parse_args()
    cfg = config_from_args(args)
    root = Path(args.output)
    if args.shard is not None:
        print(json.dumps(shard_main(cfg, args.shard, root), indent=2))
        return 0
    out = DataPrepOutputs.under(root)
    run_id = args.run_id or default_run_id()
    if args.merge_shards:
        metrics = merge_main(cfg, args.merge_shards, out, run_id)
    else:
        metrics = main(cfg, out, run_id)
    if args.with_base_model:
        base_model_main(cfg, root / "base_model")
    print(json.dumps(metrics, indent=2))
    return 0
