"""The `coldstart` command: run the DAG locally, compile it for a cluster."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from components.common.config import load_config
from components.common.errors import InputError
from components.common.stage_cli import setup_logging
from pipelines import doctor, rerun, runs, submit
from pipelines.compile import add_image_tag_arg


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="YAML config (default: configs/tiny.yaml values)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set sft.learning_rate=2e-5 (repeatable)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.local import describe_outputs, run_local

    cfg = load_config(args.config, args.overrides + (["ablation=true"] if args.ablation else []))
    start = time.time()
    root = run_local(cfg, cache=not args.no_cache)
    print(f"\ncoldstart run finished in {time.time() - start:.0f}s\n{describe_outputs(cfg, root)}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_package
    from pipelines.pipeline import build_pipeline

    cfg = load_config(args.config, args.overrides)
    compile_package(build_pipeline(cfg), args.output)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coldstart", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline locally (kfp.local)")
    _add_config_args(run)
    run.add_argument(
        "--ablation",
        action="store_true",
        help="also train RL-only and evaluate base / SFT / RL / SFT+RL side by side (as the paper)",
    )
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="run every stage even if an earlier run under this output_dir had the same inputs",
    )
    run.set_defaults(func=cmd_run)
    comp = sub.add_parser(
        "compile", help="write the pipeline YAML for a Kubeflow Pipelines cluster"
    )
    _add_config_args(comp)
    add_image_tag_arg(comp)
    comp.add_argument("--output", default="pipeline.yaml")
    comp.set_defaults(func=cmd_compile)
    submit.register(sub)
    rerun.register(sub)
    runs.register(sub)
    doctor.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
