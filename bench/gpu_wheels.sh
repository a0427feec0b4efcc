#!/usr/bin/env bash
# Download the wheels bench/gpu_check.py needs on the GPU machine into .whl/ (git-ignored).
#
# The GPU machine reaches no package registry: what its image lacks travels as wheels inside the
# working tree, which may hold 64 MiB in all. This fetches exactly the pins in
# bench/gpu_wheels.txt for CPython 3.12 on manylinux x86_64 (no dependency resolution), builds
# deepspeed's wheel from its sdist (PyPI has no binary wheel) with DS_BUILD_OPS=0 (pure Python;
# its CUDA ops are JIT-compiled on first use), then checks the size and prints it.
#
#     bash bench/gpu_wheels.sh                 # into .whl/
#     WHEEL_DIR=/tmp/w bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${WHEEL_DIR:-.whl}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LIMIT_MIB=64 # the device tool's limit on everything that travels (tree + carried paths)
LIST=bench/gpu_wheels.txt

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
pins=$(grep -vE '^\s*(#|$)' "$LIST" | grep -v '^deepspeed==')
ds_pin=$(grep '^deepspeed==' "$LIST")

# shellcheck disable=SC2086  # one argument per pin
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" $pins

# deepspeed: sdist only. The build imports torch (any build: ops are off), so no build isolation.
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" "$ds_pin"

expected=$(echo "$pins" | wc -l)
got=$(find "$DEST" -type f -name '*.whl' ! -name 'deepspeed-*' | wc -l)
if [ "$got" -ne "$expected" ] || ! ls "$DEST"/deepspeed-*.whl >/dev/null 2>&1; then
  echo "gpu_wheels: expected $expected wheels + deepspeed in $DEST, found $got (+ deepspeed?)" >&2
  exit 1
fi

echo "wheels in $DEST:"
for f in "$DEST"/*.whl; do
  printf '  %8.2f MiB  %s\n' "$(echo "$(stat -c %s "$f") / 1048576" | bc -l)" "$(basename "$f")"
done
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s + 0}')
total=$((wheels + tree))
printf 'wheels %.2f MiB + working tree %.2f MiB = %.2f MiB (limit %d MiB)\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" \
  "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_wheels: over the device tool's $LIMIT_MIB MiB: drop a wheel or ignore files" >&2
  exit 1
fi
