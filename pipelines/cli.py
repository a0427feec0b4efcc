"""The `coldstart` command: run the DAG locally, compile or submit it, rerun a stage, browse runs.

Every sub-command reads `--config` (default: configs/tiny.yaml) and ends a failure the same
way: one line naming where it failed and what to fix, the path of the full log, exit code 2
for bad input and 1 for anything else (components/common/errors.py); `--verbose` adds the
traceback and shows every task's output as it happens.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from coldstart.common.errors import report_failure
from coldstart.common.stage_cli import (
    add_config_args,
    add_verbose_arg,
    resolve_config,
    setup_logging,
)
from coldstart.pipelines import doctor, rerun, runs, submit
from coldstart.pipelines.compile import add_image_tag_arg


def package_version() -> str:
    try:
        return version("coldstart")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


def cmd_run(args: argparse.Namespace) -> int:
    from coldstart.pipelines.local import run_local
    from coldstart.pipelines.preflight import preflight
    from coldstart.pipelines.run_summary import Invocation, describe

    overrides = args.overrides + (["ablation=true"] if args.ablation else [])
    cfg = resolve_config(args.config, overrides)
    preflight(cfg, local=True)
    start = time.time()
    run = run_local(cfg, cache=not args.no_cache, verbose=args.verbose)
    how = Invocation(args.config, tuple(overrides))
    print(describe(cfg, run, how, time.time() - start))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from coldstart.pipelines.compile import compile_package
    from coldstart.pipelines.pipeline import build_pipeline

    cfg = resolve_config(args.config, args.overrides)
    compile_package(build_pipeline(cfg), args.output)
    print(f"wrote {args.output}")
    return 0


def add_completion_arg(parser: argparse.ArgumentParser) -> None:
    """`--print-completion bash|zsh|tcsh` (shtab, generated from this very parser)."""
    try:
        import shtab
    except ImportError:  # an install without it still runs; completion is a convenience
        return
    shtab.add_argument_to(parser, ["--print-completion"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coldstart", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"coldstart {package_version()}")
    add_completion_arg(parser)
    common = argparse.ArgumentParser(add_help=False)
    add_config_args(common)
    add_verbose_arg(common)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run the whole pipeline locally (kfp.local)")
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
        "compile", parents=[common], help="write the pipeline YAML for a Kubeflow Pipelines cluster"
    )
    add_image_tag_arg(comp)
    comp.add_argument("--output", default="pipeline.yaml")
    comp.set_defaults(func=cmd_compile)
    submit.register(sub, common)
    rerun.register(sub, common)
    runs.register(sub, common)
    doctor.register(sub, common)
    return parser


def where(args: argparse.Namespace) -> str:
    """How the failing command is named in the error line: `run`, `runs list`, `rerun eval`."""
    parts = [args.command]
    parts += [getattr(args, "runs_command", None) or "", getattr(args, "stage", None) or ""]
    return " ".join(p for p in parts if p)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\ncoldstart {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from coldstart.pipelines.local_tasks import TaskFailed

        if isinstance(exc, TaskFailed):
            return report_failure(exc.stage, exc, args.verbose, exc.log)
        return report_failure(where(args), exc, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
