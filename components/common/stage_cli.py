"""What every stage's `python -m coldstart.<stage>` shares: config file, `--set`, logging, errors.

One source of defaults: without `--config`, every command (the stages' and `coldstart`'s) reads
`configs/tiny.yaml` of the checkout the code comes from -- the file the docs describe -- never
the schema's built-in values, which differ from it (e.g. `eval.max_new_tokens`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from coldstart.common.config import ConfigError, PipelineConfig, load_config
from coldstart.common.errors import report_failure
from coldstart.common.run_id import new_run_id

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
CONFIG_HELP = "YAML config (default: configs/tiny.yaml, the tiny CPU preset)"
VERBOSE_ENV = "COLDSTART_VERBOSE"


def default_config_path() -> Path:
    """configs/tiny.yaml next to the code; an installed wheel without the checkout must say so."""
    if not DEFAULT_CONFIG.is_file():
        raise ConfigError(
            f"no --config given and the default {DEFAULT_CONFIG} is missing (installed without "
            "the repository?): pass --config FILE (examples: configs/ in the repository)"
        )
    shown = Path(os.path.relpath(DEFAULT_CONFIG))  # as the user would type it, in messages
    return DEFAULT_CONFIG if shown.parts[0] == ".." else shown


def resolve_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """The config every command uses: `path`, else configs/tiny.yaml; then `--set` overrides."""
    return load_config(path if path is not None else default_config_path(), overrides)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """`--config` and `--set`, the same on every command."""
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set sft.learning_rate=2e-5 (repeatable)",
    )


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every log line and, on failure, the traceback (default: one line + log path)",
    )


def stage_parser(stage: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m coldstart.{stage}", description=description)
    add_config_args(parser)
    add_verbose_arg(parser)
    parser.add_argument(
        "--run-id",
        default=None,
        help="pipeline run id that groups stage runs in MLflow (default: local-<time>)",
    )
    return parser


def setup_logging(verbose: bool = False) -> None:
    level = "DEBUG" if verbose else os.environ.get("COLDSTART_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    return resolve_config(args.config, args.overrides)


def default_run_id() -> str:
    """The shell's run when `--run-id` is not given: `KFP_RUN_ID` if set, else a fresh one."""
    return os.environ.get("KFP_RUN_ID") or new_run_id()


def verbose_requested(argv: list[str]) -> bool:
    """`--verbose`/`-v` anywhere on the command line, or COLDSTART_VERBOSE=1 in the env."""
    return bool({"-v", "--verbose"} & set(argv)) or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def run_cli(main: Callable[[], int]) -> None:
    """Run a stage's CLI; a failure ends as one line (stage, message, log path) and exit 2 or 1."""
    module = main.__module__
    stage = module.split(".")[1] if module.startswith("coldstart.") else Path(sys.argv[0]).stem
    verbose = verbose_requested(sys.argv[1:])
    setup_logging(verbose)
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"\n{stage}: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        code = report_failure(stage, exc, verbose)
    sys.exit(code)
