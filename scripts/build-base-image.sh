#!/usr/bin/env bash
# Build the sandbox base image rock/base:bookworm from debootstrap (no registry needed).
#   bash scripts/build-base-image.sh [TAG]
# Skips the build when the tag exists with the same package list (the image carries it as a label, so an
# image built from an older list is rebuilt). Uses the Debian mirror named in the machine's apt sources.
# pytest is in the image: Terminal-Bench and Harbor tests run it, and nothing can be downloaded in a sandbox.
set -euo pipefail
TAG=${1:-rock/base:bookworm}
PACKAGES=python3,python3-pytest,git,procps,ca-certificates,coreutils,findutils,grep,sed,gawk,tar,gzip,bzip2,xz-utils
# The label also names the build recipe's revision: r2 = the image's / is mode 0755 (mktemp's 0700 root became
# the image's own root under the btrfs storage driver, and `su nobody` could not run /bin/sh).
RECIPE="$PACKAGES;r2"
have=$(docker image inspect -f '{{ index .Config.Labels "ale.base.packages" }}' "$TAG" 2>/dev/null || true)
if [ "$have" = "$RECIPE" ]; then exit 0; fi

mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
         | grep -oE 'https?://[^ ]+' | grep -v security | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  else
    echo "error: debootstrap is missing; install it (apt-get install debootstrap) and re-run 'make images'" >&2
    exit 1
  fi
fi

root=$(mktemp -d /tmp/rock-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror into $root (about a minute) ..." >&2
debootstrap --variant=minbase \
  --include="$PACKAGES" \
  bookworm "$root" "$mirror" >/tmp/rock-debootstrap.log 2>&1 \
  || { echo "error: debootstrap failed; see /tmp/rock-debootstrap.log" >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
chmod 0755 "$root"
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' -c 'WORKDIR /root' -c "LABEL ale.base.packages=$RECIPE" -c 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "built $TAG" >&2
