from coldstart.common.stage_cli import run_cli
from coldstart.grpo.cli import cli

run_cli(cli)
