#!/usr/bin/env bash
# A base image for the Dockerfile's BASE argument, made from Debian's packages where no image registry is
# reachable: Debian bookworm (minbase) with python3, its venv module and the CA certificates.
#   deploy/debootstrap-base.sh rnnserve/base:bookworm [MIRROR]
#   docker build --build-arg BASE=rnnserve/base:bookworm --target serve -t rnnserve/serve .
set -euo pipefail
tag=${1:?usage: $0 TAG [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >/dev/null
# what a slim image leaves out: downloaded packages, package lists, documentation and translations
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "$tag"
