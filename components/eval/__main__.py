from coldstart.common.stage_cli import run_cli
from coldstart.eval.cli import cli

run_cli(cli)
