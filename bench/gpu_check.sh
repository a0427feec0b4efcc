#!/usr/bin/env bash
# The GPU check in one command on the GPU machine (the device tool's `run`), from the repo root:
#
#     bash bench/gpu_wheels.sh              # here, once: the wheels into .whl/ (git-ignored)
#     device run: command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 600
#
# Installs the carried wheels into a private site (no index: nothing can be fetched there),
# records the environment (GPU, driver, nvcc, what DeepSpeed's JIT would need, pip check) in
# $OUT/env.txt, then runs bench/gpu_check.py with a 480 s budget; its JSON, Markdown and log
# tails land in $OUT. Extra arguments go to gpu_check.py (e.g. --parts sft_zero2,grpo).
# GPU_CHECK_JIT=1 also JIT-builds DeepSpeed's FusedAdam op (not needed for ZeRO-2 with our
# AdamW; about a minute) to show whether CUDA extensions build there.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/gpu-check-out}
BUDGET_S=${BUDGET_S:-480}
SITE=/tmp/gpu-check-site
mkdir -p "$OUT"

if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "gpu_check.sh: no wheels in .whl/: run bash bench/gpu_wheels.sh here and carry .whl" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .whl/*.whl || exit 2
export PYTHONPATH="$SITE:$PWD"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=/tmp/torch-extensions

# The carried transformers checks the image's regex, tokenizers, hub... at import: if it refuses,
# fall back to the image's own transformers (inside the project's range) rather than lose the run.
if ! python3 -c "import transformers" >"$OUT/transformers-import.txt" 2>&1; then
  echo "carried transformers does not import here (see transformers-import.txt); using the image's"
  rm -rf "$SITE"/transformers "$SITE"/transformers-*.dist-info
else
  rm -f "$OUT/transformers-import.txt"
fi

{
  echo "== nvidia-smi"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "== python, torch, CUDA, what a JIT build needs"
  python3 - <<'EOF'
import importlib.metadata as md, os, shutil, sys
import torch
from torch.utils import cpp_extension
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("CUDA_HOME", cpp_extension.CUDA_HOME, "nvcc", shutil.which("nvcc"), "ninja", shutil.which("ninja"))
print("torch/extension.h", os.path.exists(os.path.join(cpp_extension.include_paths()[0], "torch", "extension.h")))
for pkg in ("transformers", "accelerate", "peft", "datasets", "deepspeed", "pydantic", "pyarrow",
            "fsspec", "huggingface-hub", "tokenizers", "typing-extensions", "numpy"):
    try:
        print(f"{pkg}=={md.version(pkg)}")
    except md.PackageNotFoundError:
        print(f"{pkg}: missing")
EOF
  nvcc --version | tail -2
  echo "== pip check (conflicts between the image and the carried wheels)"
  python3 -m pip check
  echo "== ds_report"
  timeout 120 python3 -m deepspeed.env_report
  if [ "${GPU_CHECK_JIT:-0}" = 1 ]; then
    echo "== JIT build of DeepSpeed FusedAdam"
    timeout 180 python3 -c "from deepspeed.ops.op_builder import FusedAdamBuilder as B; B().load(); print('JIT ok')"
  fi
} >"$OUT/env.txt" 2>&1
echo "environment recorded in $OUT/env.txt"

python3 bench/gpu_check.py --out "$OUT" --budget-s "$BUDGET_S" "$@"
