"""`coldstart rerun STAGE`: one stage alone on existing artifacts, locally or on the cluster.

    coldstart rerun eval --local --model sft=outputs/.../model --data outputs/.../eval_data \
        --images outputs/.../images
    coldstart rerun grpo --host http://localhost:8888 --init-model s3://b/sft/model \
        --data s3://b/rl --images s3://b/images

Both build the same one-stage pipeline (inputs imported with `dsl.importer`, see
stage_pipeline.py); `--local` runs it through kfp.local, `--host` submits it like `submit`.
With caching on, the stage's MLflow runs are grouped under an id derived from the stage, config
and inputs, so an unchanged rerun is a cache hit on the cluster and locally.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from coldstart.common.config import PipelineConfig
from coldstart.common.errors import InputError
from coldstart.common.image_store import STORE_FLAG
from coldstart.common.stage_cli import resolve_config
from coldstart.pipelines.local_tasks import LocalRun
from coldstart.pipelines.stage_pipeline import (
    STAGES,
    StageSpec,
    build_stage_pipeline,
    check_inputs,
    rerun_run_id,
)
from coldstart.pipelines.submit import (
    add_server_args,
    check_host,
    exit_code,
    server_options,
    submit_pipeline,
)

MODEL_NAMES = {
    "base": "base_model",
    "sft": "sft_model",
    "rl": "rl_model",
    "sft_rl": "sft_rl_model",
    "init": "init_model",
}
PRIMARY_MODEL = {"sft": "base_model", "grpo": "init_model"}


def _dataset_input(spec: StageSpec, stage: str) -> str:
    names = [i.name for i in spec.inputs if i.kind.__name__ == "Dataset" and i.name != STORE_FLAG]
    if not names:
        raise InputError(f"{stage} takes no dataset (--data)")
    return names[0]


def _model_input(stage: str, text: str) -> tuple[str, str]:
    """`sft=URI` -> ('sft_model', URI); a bare URI -> the stage's primary model input."""
    name, sep, uri = text.partition("=")
    if sep and name in MODEL_NAMES:
        return MODEL_NAMES[name], uri
    if stage in PRIMARY_MODEL and "=" not in text.split("://")[0]:
        return PRIMARY_MODEL[stage], text
    raise InputError(f"--model {text!r}: write NAME=URI with NAME in {sorted(MODEL_NAMES)}")


def input_uris(args: argparse.Namespace) -> dict[str, str]:
    """The command line's inputs as {component input name: URI}."""
    spec = STAGES.get(args.stage)
    if spec is None:
        raise InputError(f"unknown stage {args.stage!r}; valid: {sorted(STAGES)}")
    pairs = [_model_input(args.stage, m) for m in args.models]
    if args.init_model:
        pairs.append(("init_model", args.init_model))
    if args.base_model:
        pairs.append(("base_model", args.base_model))
    if args.data:
        pairs.append((_dataset_input(spec, args.stage), args.data))
    if args.images:
        if STORE_FLAG not in {i.name for i in spec.inputs}:
            raise InputError(f"{args.stage} takes no image store (--images)")
        pairs.append((STORE_FLAG, args.images))
    uris: dict[str, str] = {}
    for name, uri in pairs:
        if name in uris:
            raise InputError(f"{name} given twice ({uris[name]} and {uri})")
        uris[name] = uri
    check_inputs(args.stage, uris)
    return uris


def local_uris(uris: dict[str, str]) -> dict[str, str]:
    """Local runs: absolute paths that exist (kfp.local runs tasks in another working directory)."""
    out = {}
    for name, uri in uris.items():
        if "://" in uri:
            raise InputError(
                f"{name}: {uri} is remote; --local reads local directories (copy it down first)"
            )
        path = Path(uri).expanduser().resolve()
        if not path.exists():
            raise InputError(f"{name}: {path} does not exist")
        out[name] = str(path)
    return out


def cluster_uris(uris: dict[str, str]) -> dict[str, str]:
    local = {name: uri for name, uri in uris.items() if "://" not in uri}
    if local:
        raise InputError(
            f"on the cluster inputs must be object-store URIs (s3://...); local paths: {local}"
        )
    return uris


def rerun_local(
    cfg: PipelineConfig, stage: str, uris: dict[str, str], cache: bool, verbose: bool = False
) -> LocalRun:
    """Run the one-stage pipeline with kfp.local; returns what ran (outputs, logs)."""
    from coldstart.pipelines.local import absolutize, run_supervised

    cfg = absolutize(cfg)
    run_id = rerun_run_id(cfg, stage, uris) if cache else None
    label = f"rerun-{stage.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = run_supervised(build_stage_pipeline(cfg, stage, uris, run_id), cfg, label, cache, verbose)
    run.pipeline_run_id = run_id
    return run


def cmd_rerun(args: argparse.Namespace) -> int:
    from coldstart.pipelines.preflight import preflight

    if not args.local and not args.host:
        raise InputError(
            "give --local (run here) or --host URL (the KFP API server; or set KF_PIPELINES_ENDPOINT)"
        )
    cfg = resolve_config(args.config, args.overrides)
    uris = input_uris(args)
    if args.local:
        from coldstart.pipelines.run_summary import Invocation, describe

        uris = local_uris(uris)
        preflight(cfg, local=True, inputs=uris)
        start = time.time()
        run = rerun_local(cfg, args.stage, uris, cache=not args.no_cache, verbose=args.verbose)
        how = Invocation(args.config, tuple(args.overrides))
        print(describe(cfg, run, how, time.time() - start))
        return 0
    uris = cluster_uris(uris)
    opts = server_options(args)

    def checks() -> None:
        check_host(opts.host)
        preflight(cfg, local=False, inputs=uris)

    run_id = None if args.no_cache else rerun_run_id(cfg, args.stage, uris)
    pipeline = build_stage_pipeline(cfg, args.stage, uris, run_id)
    return exit_code(submit_pipeline(pipeline, cfg, opts, before_server=checks))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`rerun STAGE`; `common` carries --config, --set and --verbose."""
    parser = sub.add_parser(
        "rerun",
        parents=[common],
        help="run one stage alone on existing artifacts (locally or on the cluster)",
    )
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument(
        "--local", action="store_true", help="run here through kfp.local (instead of --host)"
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="[NAME=]URI",
        help=f"a model input; NAME in {sorted(MODEL_NAMES)} (bare URI: sft's base, grpo's init)",
    )
    parser.add_argument(
        "--init-model", default=None, metavar="URI", help="grpo: the model to start from"
    )
    parser.add_argument(
        "--base-model",
        default=None,
        metavar="URI",
        help="sft: the model to fine-tune (default: built from model.name_or_path); "
        "eval: same as --model base=URI",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="URI",
        help="the stage's dataset (sft/, rl/ or eval/ folder)",
    )
    parser.add_argument(
        f"--{STORE_FLAG}",
        default=None,
        metavar="URI",
        help="data_prep's image store (images/ folder or artifact) that --data's image keys "
        "point into; not needed for a dataset with its images inline",
    )
    add_server_args(parser, host_required=False)
    parser.set_defaults(func=cmd_rerun)
