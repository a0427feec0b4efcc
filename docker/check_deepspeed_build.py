"""Build-time assertion of the train image: DeepSpeed was built for CUDA with fused Adam inside.

`docker build` runs without a GPU, so DeepSpeed's setup picks the *cpu* accelerator unless
DS_ACCELERATOR=cuda is set, and then prebuilds no CUDA op: every pod would JIT-compile FusedAdam
at its first step, which needs nvcc in the runtime image and minutes per pod. DeepSpeed records
what its setup built in `deepspeed.git_version_info`; this script fails the build when that is
not CUDA + fused_adam. Usage: python check_deepspeed_build.py [OP ...] (default: fused_adam).
"""

from __future__ import annotations

import sys


def problems(accelerator: str, installed_ops: dict[str, bool], ops: list[str]) -> list[str]:
    out = []
    if accelerator != "cuda":
        out.append(
            f"DeepSpeed was built for the {accelerator or 'unknown'!r} accelerator, not 'cuda': "
            "set DS_ACCELERATOR=cuda when pip installs deepspeed (no GPU at build time)"
        )
    missing = [op for op in ops if not installed_ops.get(op)]
    if missing:
        flags = " ".join(f"DS_BUILD_{op.upper()}=1" for op in missing)
        out.append(f"DeepSpeed ops not prebuilt: {missing}; install deepspeed with {flags}")
    return out


def installed_build() -> dict:
    """What DeepSpeed's setup recorded, read from its file (importing deepspeed would probe GPUs)."""
    import runpy
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("deepspeed")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("check_deepspeed_build: deepspeed is not installed")
    path = Path(spec.submodule_search_locations[0]) / "git_version_info_installed.py"
    if not path.exists():
        raise SystemExit(f"check_deepspeed_build: {path} missing: deepspeed not built by its setup")
    return runpy.run_path(str(path))


def main(ops: list[str]) -> int:
    info = installed_build()
    found = problems(info["accelerator_name"], dict(info["installed_ops"]), ops or ["fused_adam"])
    for line in found:
        print(f"check_deepspeed_build: {line}", file=sys.stderr)
    if not found:
        print(f"check_deepspeed_build: cuda, prebuilt {ops or ['fused_adam']}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
