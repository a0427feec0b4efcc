"""Several GPUs in one pod: a stage re-runs itself under torchrun, one process per GPU.

The kfp component and `python -m coldstart.<stage>` both arrive in the stage's `cli.main`.
With more than one CUDA device and no torchrun around us yet, the stage re-executes itself as
`torchrun --nproc_per_node=N -m coldstart.<stage> ...` with the same config (written to a
file) and paths; every worker trains, and rank 0 writes the result JSON that this parent
returns. Workers are recognised by LOCAL_RANK, which torchrun sets. On CPU, on one GPU and
inside a worker, the stage trains in-process. Shared by SFT and GRPO.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from coldstart.common.config import PipelineConfig

log = logging.getLogger(__name__)


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def is_torchrun_worker() -> bool:
    return "LOCAL_RANK" in os.environ


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def processes_to_launch() -> int:
    """How many workers this pod should run: the GPU count, or 1 (in-process) on CPU / 1 GPU / a worker."""
    return 1 if is_torchrun_worker() else max(1, cuda_device_count())


def torchrun_command(module: str, nproc: int, stage_args: dict[str, str]) -> list[str]:
    """`python -m torch.distributed.run ... -m <module> <stage args>`, once per device on this node."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
    ]
    for flag, value in stage_args.items():
        cmd += [flag, str(value)]
    return cmd


def run_under_torchrun(
    module: str, cfg: PipelineConfig, stage_args: dict[str, str], nproc: int, result_flag: str
) -> dict[str, float]:
    """Run `module` in `nproc` torchrun workers; return the JSON rank 0 writes to `result_flag`'s path."""
    with tempfile.TemporaryDirectory(prefix="coldstart-torchrun-") as tmp:
        config_path, result_path = Path(tmp) / "config.json", Path(tmp) / "result.json"
        config_path.write_text(cfg.to_json())  # JSON is YAML: the worker's --config reads it as is
        args = {"--config": str(config_path), **stage_args, result_flag: str(result_path)}
        cmd = torchrun_command(module, nproc, args)
        log.info("%s: %d devices, launching: %s", module, nproc, shlex.join(cmd))
        code = subprocess.run(cmd, check=False).returncode
        if code != 0:
            raise RuntimeError(
                f"{module}: torchrun exited with code {code}; the workers' errors are in the log above"
            )
        return json.loads(result_path.read_text())
