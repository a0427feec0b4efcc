"""What every bench result records about where it ran, so two JSON files can be compared fairly.

Timings on a shared 2-core machine depend on the threads torch used and on what else was running;
the load average before and after a run says whether a number is trustworthy.
"""

from __future__ import annotations

import os
import platform
import time


def software_facts() -> dict[str, object]:
    """Torch threads and versions, and when the result was written (torch imported here: `--help` stays fast)."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def machine_facts(load_before: tuple[float, float, float]) -> dict[str, object]:
    """CPUs, thread settings and load around a run (`load_before` = `os.getloadavg()` at its start)."""
    return {
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        **software_facts(),
    }
