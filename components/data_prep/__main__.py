from coldstart.common.stage_cli import run_cli
from coldstart.data_prep.cli import cli

if __name__ == "__main__":  # data_prep's worker processes import this module again
    run_cli(cli)
