"""`python -m coldstart.eval`: evaluate model directories on the configured benchmarks outside kfp.

    python -m coldstart.eval --config configs/tiny.yaml \\
        --model base=outputs/base_model --model SFT+RL=s3://bucket/run/grpo \\
        --data outputs/data/eval --output outputs/eval
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from coldstart.common import storage
from coldstart.common.config import PipelineConfig
from coldstart.common.digests import json_digest
from coldstart.common.errors import InputError
from coldstart.common.image_store import STORE_FLAG
from coldstart.common.run_id import require_run_id, run_path
from coldstart.common.stage_cli import config_from_args, default_run_id, stage_parser
from coldstart.common.tracking import stage_run
from coldstart.eval.benchmarks import EvalData
from coldstart.eval.predictions import FILES as PREDICTION_FILES
from coldstart.eval.predictions import TABLE_FILE
from coldstart.eval.stage import KFP_METRICS, EvalOutputs, EvalPaths, run_eval, write_outputs

log = logging.getLogger(__name__)

MODEL_NAMES = ("base", "SFT", "RL", "SFT+RL")  # the paper's ablation rows, in its order
ARTIFACT_DIR = "eval"  # MLflow artifact folder of the stage run


def main(
    cfg: PipelineConfig,
    models: Mapping[str, str],
    eval_data_dir: str | Path | None,
    output_dir: str | Path,
    run_id: str,
    outputs: EvalOutputs | None = None,
    images_dir: str | Path | None = None,
) -> dict[str, float]:
    """The stage as the component and the shell both call it: evaluate, write outputs, log to MLflow.

    `models` maps display names (base, SFT, RL, SFT+RL) to model dirs or s3:// prefixes; the
    report lists them in this order. `images_dir` is data_prep's image store, which its eval
    folder's image keys point into. Returns the flat metrics (`eval/<model>/<benchmark>/score`).
    """
    run_id = require_run_id(run_id)  # the component passes '' and the pod has KFP_RUN_ID
    outputs = outputs or EvalOutputs.in_folder(output_dir)
    cache = local_cache(cfg)
    with stage_run(cfg, "eval", run_id) as tracker:
        tracker.log_params(
            {
                "eval.models": json.dumps(dict(models)),
                "eval.benchmarks": ",".join(b.name for b in cfg.eval.benchmarks),
                "eval.max_new_tokens": cfg.eval.max_new_tokens,
                "eval.backend": cfg.eval.backend,
                "eval.scoring": ",".join(cfg.eval.scoring),
                "eval.extractor": cfg.eval.extractor.model if cfg.eval.extractor else "rules",
            }
        )
        data = EvalData(eval_data_dir, images_dir) if eval_data_dir is not None else None
        run = run_eval(cfg, models, data, cache, eval_paths(cfg, run_id), outputs.predictions)
        files = [outputs.predictions / name for name in PREDICTION_FILES]
        files += write_outputs(run, outputs)
        metrics = run.metrics()
        tracker.log_metrics(metrics)
        headline = ("/average", *(f"/{m}" for m in KFP_METRICS))
        tracker.log_metrics({k: v for k, v in metrics.items() if k.endswith(headline)}, parent=True)
        # kfp output paths have no extension; MLflow's UI previews by extension.
        names = {outputs.report: "report.md", outputs.chart: "chart.png"}
        for path in files:
            tracker.log_artifact(path, ARTIFACT_DIR, name=names.get(path))
        _mark_table(tracker, f"{ARTIFACT_DIR}/{TABLE_FILE}")
    return metrics


def eval_paths(cfg: PipelineConfig, run_id: str) -> EvalPaths:
    """Progress logs under `<output_dir>/<run id>/eval` (a retry of the run resumes; each log is
    also named by its model, data and settings), the extractor cache under `<output_dir>/cache`
    (shared by runs: keyed by the whole request); an s3 `output_dir` is mirrored, its local copy
    kept under a folder of that output_dir's own."""
    cache = local_cache(cfg) / "extractor.sqlite"
    if storage.is_s3(cfg.output_dir):
        remote = run_path(cfg.output_dir, run_id, "eval")
        cache_remote = storage.join(cfg.output_dir, "cache", "extractor.sqlite")
        work = run_path(local_cache(cfg) / json_digest(cfg.output_dir)[:12], run_id, "eval")
        return EvalPaths(Path(work), remote, cache, cache_remote)
    return EvalPaths(Path(run_path(Path(cfg.output_dir).resolve(), run_id, "eval")), cache=cache)


def local_cache(cfg: PipelineConfig) -> Path:
    """Where s3:// models and benchmarks are downloaded: under a local output_dir, else a temp folder."""
    return storage.local_cache_dir(cfg.output_dir)


def _mark_table(tracker, artifact: str) -> None:
    """Tag the predictions JSON as an MLflow table, as `mlflow.log_table` does, so the UI shows it as one.

    (`log_table` itself needs a fluent active run; the stage logs through its buffered tracker.)
    """
    set_tags = getattr(tracker, "set_tags", None)
    if set_tags is not None:
        set_tags({"mlflow.loggedArtifacts": json.dumps([{"path": artifact, "type": "table"}])})


def parse_models(items: list[str]) -> dict[str, str]:
    """`["base=dir", "SFT+RL=s3://b/m"]` -> {"base": "dir", "SFT+RL": "s3://b/m"}, order kept."""
    models: dict[str, str] = {}
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise InputError(
                f"--model {item!r}: expected NAME=DIR_OR_S3, e.g. --model base=outputs/base_model"
            )
        if name.strip() in models:
            raise InputError(f"--model {name.strip()!r} given twice")
        models[name.strip()] = ref.strip()
    if not models:
        raise InputError(
            f"give at least one --model NAME=DIR_OR_S3 (names as in the paper: {', '.join(MODEL_NAMES)})"
        )
    return models


def cli() -> int:
    parser = stage_parser(
        "eval", "Evaluate models on the configured benchmarks (report, chart, predictions)."
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="NAME=DIR_OR_S3",
        help="a model to evaluate, e.g. base=outputs/base_model (repeatable; report order)",
    )
    parser.add_argument(
        "--data", default=None, help="data_prep's eval folder (the synthetic benchmark)"
    )
    parser.add_argument(
        f"--{STORE_FLAG}",
        default=None,
        help="data_prep's images/ folder (the image store the eval folder's rows point into)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="folder for report.md, chart.png, predictions/, metrics.json",
    )
    args = parser.parse_args()
    cfg = config_from_args(args)
    run_id = args.run_id or default_run_id()
    models = parse_models(args.models)
    metrics = main(cfg, models, args.data, args.output, run_id, images_dir=args.images)
    table = json.loads(Path(args.output, "metrics.json").read_text())["table"]
    print(json.dumps(table, indent=2))
    print(f"metrics: {len(metrics)} logged; report: {Path(args.output) / 'report.md'}")
    return 0
