"""What every stage's `python -m components.<stage>` shares: config file, `--set`, logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from components.common.config import PipelineConfig, load_config
from components.common.errors import InputError
from components.common.run_id import resolve_run_id


def stage_parser(stage: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m components.{stage}", description=description)
    parser.add_argument("--config", help="YAML config (default: built-in tiny defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set sft.learning_rate=2e-5 (repeatable)",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="pipeline run id that groups stage runs in MLflow (default: local-<time>)",
    )
    return parser


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("COLDSTART_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    return load_config(args.config, args.overrides)


def default_run_id() -> str:
    return resolve_run_id(None)


def run_cli(main: Callable[[], int]) -> None:
    """Turn input errors into one readable line and exit code 2 instead of a traceback."""
    setup_logging()
    try:
        sys.exit(main())
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
