#!/usr/bin/env bash
# Builds the local base image (Debian bookworm + python3 from Debian's packages, via debootstrap) that stands in
# for the public python:3.11-slim-bookworm when no container registry can be reached. Skips when it exists.
set -euo pipefail
IMAGE=${1:-localhost/kubetrain-base:bookworm}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

if buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists"
  exit 0
fi
# the Debian mirror apt uses here (deb822 or one-line sources), else the public one
MIRROR=$(grep -hoE '^URIs: *\S+/debian\b' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
MIRROR=${MIRROR:-$(grep -hoE '^deb +\S+/debian ' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log"; exit 1; }
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
ctr=$(buildah from scratch)
buildah add "$ctr" "$work/rootfs.tar" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  --cmd python3 --label org.opencontainers.image.description="Debian bookworm minbase + python3 (debootstrap)" "$ctr"
buildah commit --rm "$ctr" "$IMAGE" >/dev/null
echo "built $IMAGE"
