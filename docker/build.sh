#!/usr/bin/env bash
# Build, tag and push the coldstart images: cpu, train, rollout (rollout is built FROM train).
#
#   docker/build.sh [--dry-run] [--no-push] [--latest] [KIND...]
#
#   KIND       cpu | train | rollout (default: all three; rollout needs train of the same tag,
#              built here or already in the registry)
#   --dry-run  print the plan and the commands, run nothing (no Docker needed)
#   --no-push  build and tag only
#   --latest   also tag and push :latest (for people; the pipeline and k8s/ never use it)
#
# Environment:
#   COLDSTART_REGISTRY   registry/namespace to push to (default: components/common/images.py's)
#   COLDSTART_IMAGE_TAG  tag (default: the git sha, 12 characters, "-dirty" if the tree has changes)
#   DOCKER               container CLI (default: docker; podman works)
#   FLASH_ATTN=1         compile flash-attention into the train image (long; see docker/README.md)
#   BUILD_ARGS           extra arguments for every build, e.g. "--platform linux/amd64 --pull"
#   PYTHON               interpreter used to read the image names (default: python3)
#
# Image names come from components/common/images.py (image_ref), the module the pipeline takes
# its task images from, so what is pushed here is what a compiled pipeline pulls when it is
# compiled with the same COLDSTART_REGISTRY and COLDSTART_IMAGE_TAG.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DRY_RUN=0 PUSH=1 LATEST=0 KINDS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --no-push) PUSH=0 ;;
    --latest) LATEST=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "build.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) KINDS+=("$arg") ;;
  esac
done

PYTHON=${PYTHON:-python3}
DOCKER=${DOCKER:-docker}
images_py() { PYTHONPATH="$ROOT" "$PYTHON" -c "from coldstart.common import images; $1"; }
ALL_KINDS=$(images_py 'print(" ".join(images.IMAGE_KINDS))')
[ ${#KINDS[@]} -eq 0 ] && read -r -a KINDS <<<"$ALL_KINDS"
for kind in "${KINDS[@]}"; do
  case " $ALL_KINDS " in *" $kind "*) ;; *) echo "build.sh: unknown image kind '$kind'; valid: $ALL_KINDS" >&2; exit 2 ;; esac
done
ORDERED=()  # images.py's order (train before rollout, which is built FROM it)
for kind in $ALL_KINDS; do
  case " ${KINDS[*]} " in *" $kind "*) ORDERED+=("$kind") ;; esac
done
KINDS=("${ORDERED[@]}")
for kind in "${KINDS[@]}"; do
  [ -f "docker/$kind.Dockerfile" ] || { echo "build.sh: docker/$kind.Dockerfile is missing" >&2; exit 2; }
done

GIT_SHA=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -z "${COLDSTART_IMAGE_TAG:-}" ]; then
  COLDSTART_IMAGE_TAG=$GIT_SHA
  if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    COLDSTART_IMAGE_TAG="$GIT_SHA-dirty"
    echo "build.sh: the working tree has uncommitted changes: tagging $COLDSTART_IMAGE_TAG" >&2
  fi
fi
export COLDSTART_IMAGE_TAG
ref() { images_py "print(images.image_ref('$1'))"; }
latest_ref() { images_py "print(images.image_ref('$1', tag='latest'))"; }

run() {  # print the command; run it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}

read -r -a EXTRA <<<"${BUILD_ARGS:-}"
TRAIN_REF=$(ref train)
for kind in "${KINDS[@]}"; do
  echo "image $kind $(ref "$kind") docker/$kind.Dockerfile"
done
for kind in "${KINDS[@]}"; do
  target=$(ref "$kind")
  args=(--file "docker/$kind.Dockerfile" --tag "$target" --build-arg "GIT_SHA=$GIT_SHA")
  case "$kind" in
    train) args+=(--build-arg "FLASH_ATTN=${FLASH_ATTN:-0}") ;;
    rollout) args+=(--build-arg "TRAIN_IMAGE=$TRAIN_REF") ;;
  esac
  run "$DOCKER" build "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"} .
  if [ "$LATEST" = 1 ]; then run "$DOCKER" tag "$target" "$(latest_ref "$kind")"; fi
  if [ "$PUSH" = 1 ]; then
    run "$DOCKER" push "$target"
    if [ "$LATEST" = 1 ]; then run "$DOCKER" push "$(latest_ref "$kind")"; fi
  fi
done

echo "# compile and submit against these images (compile/submit refuse latest and unset tags):"
echo "export COLDSTART_REGISTRY=${COLDSTART_REGISTRY:-$(images_py 'print(images.DEFAULT_REGISTRY)')} COLDSTART_IMAGE_TAG=$COLDSTART_IMAGE_TAG"
echo "# and for k8s/: newTag: $COLDSTART_IMAGE_TAG in k8s/components/images/kustomization.yaml"
