#!/usr/bin/env bash
# Builds the Dockerfile's targets with buildah (no Docker engine here): `images/build.sh control runtime mlflow`.
#
# Settings (environment):
#   BASE_IMAGE  base of both images; default: the local Debian base images/base.sh makes (no registry here);
#               a machine that reaches Docker Hub can pass python:3.11-slim-bookworm (the Dockerfile's default)
#   VARIANT     cpu (default) or cuda: which torch build the runtime image gets
#   HOST_PIP    yes (default): pass this machine's pip settings (find-links, index URLs, CA file) into the build,
#               mounting the local directories and files they name read-only for the build only
#   TAG_SUFFIX  appended to the tags (e.g. -cuda)
#   LOCKED      yes (default): install under images/<target>.lock; no: the newest versions pyproject.toml allows
#               (then images/lock.sh re-pins; `make images-lock` does both)
# Images: ghcr.io/kubetrain/kubetrain-control:<version>, ghcr.io/kubetrain/kubetrain:<version> (the runtime,
# the default PlatformConfig.image) and ghcr.io/kubetrain/kubetrain-mlflow:<version>, in buildah's local storage (vfs, chroot isolation: no daemon, no overlay).
set -euo pipefail
cd "$(dirname "$0")/.."
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain -- service pyproject.toml constraints.txt Dockerfile 2>/dev/null)" ] || REVISION="$REVISION-dirty"
LOCAL_BASE=localhost/kubetrain-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
VARIANT=${VARIANT:-cpu}
TAG_SUFFIX=${TAG_SUFFIX:-}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(control runtime mlflow)

[ "$BASE_IMAGE" != "$LOCAL_BASE" ] || images/base.sh "$LOCAL_BASE"

# This machine's pip settings -> pip flags for the build, and the local paths they need mounted.
pip_conf() { "$PY" -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'$/\1/p" | tail -1; }
PIP_ARGS=""
VOLUMES=()
mount_ro() { [ -e "$1" ] && VOLUMES+=(--volume "$1:$1:ro"); }
if [ "${HOST_PIP:-yes}" = yes ]; then
  for link in $(pip_conf find-links); do
    PIP_ARGS+=" --find-links $link"
    mount_ro "$link" || true
  done
  for kind in index-url extra-index-url; do
    for url in $(pip_conf $kind); do
      PIP_ARGS+=" --$kind $url"
      # a file:// index names its files relative to the folder above simple/
      case "$url" in file://*) mount_ro "$(dirname "${url#file://}")" || true ;; esac
    done
  done
  # torch from the index this machine already has (download.pytorch.org may be unreachable)
  TORCH_INDEX_URL=${TORCH_INDEX_URL:-$(pip_conf extra-index-url | awk '{print $1}')}
  cert=$(pip_conf cert)
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    VOLUMES+=(--volume "$cert:/run/kubetrain-build/ca.crt:ro")
    PIP_ARGS+=" --cert /run/kubetrain-build/ca.crt"
  fi
fi

for target in "${TARGETS[@]}"; do
  case "$target" in
    control) image=ghcr.io/kubetrain/kubetrain-control:$VERSION$TAG_SUFFIX ;;
    runtime) image=ghcr.io/kubetrain/kubetrain:$VERSION$TAG_SUFFIX ;;
    mlflow) image=ghcr.io/kubetrain/kubetrain-mlflow:$VERSION ;;
    *) echo "unknown target '$target' (control, runtime or mlflow)" >&2; exit 1 ;;
  esac
  start=$(date +%s)
  previous=$(buildah images --noheading --format '{{.ID}}' "$image" 2>/dev/null | head -1 || true)
  buildah build --layers --target "$target" --tag "$image" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VARIANT="$VARIANT" --build-arg PIP_ARGS="$PIP_ARGS" \
    --build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL:-}" --build-arg LOCKED="${LOCKED:-yes}" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    "${VOLUMES[@]}" --file Dockerfile . >&2
  # vfs stores every layer as a full copy: drop the image this build replaced (its cached layers stay)
  current=$(buildah images --noheading --format '{{.ID}}' "$image" | head -1)
  [ -z "$previous" ] || [ "$previous" = "$current" ] || buildah rmi "$previous" >/dev/null 2>&1 || true
  echo "built $image ($target) in $(( $(date +%s) - start ))s, size $(buildah images --format '{{.Size}}' "$image" | head -1)"
done
