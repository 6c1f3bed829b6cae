#!/bin/sh
# A base image for deploy/Dockerfile made without Docker Hub: Debian bookworm from a Debian mirror
# (debootstrap) with its Python 3.11, imported into the local runtime. For machines that reach a
# Debian mirror and PyPI but no container registry.
#   sudo deploy/build-offline-base.sh [TAG] [MIRROR]
#   docker build --build-arg PYTHON_IMAGE=tuneloop-base:bookworm -f deploy/Dockerfile -t tuneloop:0.1.0 .
# Needs root, debootstrap, and docker (or podman: RUNTIME=podman).
set -eu

TAG=${1:-tuneloop-base:bookworm}
MIRROR=${2:-http://deb.debian.org/debian}
RUNTIME=${RUNTIME:-docker}
# python-is-python3: the Dockerfile calls `python` as the python:3.11 images provide it;
# passwd: groupadd/useradd for the non-root user; ca-certificates: pip over HTTPS.
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd

ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/tuneloop-rootfs.XXXXXX")
trap 'rm -rf "$ROOTFS"' EXIT INT TERM

debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR"
# What a container does not need: package lists and caches, docs, man pages.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
    "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/*.log
# Debian marks its Python "externally managed"; only the venv in the Dockerfile installs into it,
# and a venv is exempt, so the marker stays.
tar --numeric-owner -C "$ROOTFS" -c . | "$RUNTIME" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TAG"
"$RUNTIME" run --rm "$TAG" python -c 'import sys, venv, ensurepip; print(sys.version)'
