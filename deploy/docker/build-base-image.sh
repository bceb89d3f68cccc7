#!/bin/sh
# Build the HFX base image without a container registry: a minimal Debian rootfs made with
# debootstrap (from a Debian mirror or apt proxy), imported as an image. Then:
#   podman build --build-arg BASE_IMAGE=localhost/hfx-base:bookworm -t hfx:latest .
#
#   SUITE   Debian suite (default bookworm: python3 is 3.11, as HFX requires)
#   MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   TAG     image name (default localhost/hfx-base:bookworm)
#   ENGINE  podman or docker (default: podman if installed, else docker)
# Needs root (debootstrap), and `apt-get install debootstrap podman` on Debian.
set -eu
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TAG=${TAG:-localhost/hfx-base:bookworm}
if [ -z "${ENGINE:-}" ]; then
    if command -v podman >/dev/null 2>&1; then ENGINE=podman; else ENGINE=docker; fi
fi

ROOTFS=$(mktemp -d /tmp/hfx-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
# python3-venv: the Dockerfile installs into /opt/venv (Debian's system Python is externally
# managed, PEP 668). libnuma1: vLLM's CPU kernels. ca-certificates: pip over HTTPS.
debootstrap --variant=minbase \
    --include=python3,python3-venv,libnuma1,libstdc++6,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR"
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin
tar -C "$ROOTFS" --numeric-owner -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$TAG"
echo "built $TAG; now: $ENGINE build --build-arg BASE_IMAGE=$TAG -t hfx:latest ."
