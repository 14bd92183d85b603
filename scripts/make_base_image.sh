#!/usr/bin/env bash
# Make the small base image every model image builds on: Debian bookworm
# minbase with python3 and venv, imported into the local Docker engine.
# No registry pull is possible here, so this is how the base comes to be.
#   scripts/make_base_image.sh [IMAGE]      (default constellation/base:bookworm)
# EXTRA_PACKAGES (comma separated Debian packages) adds to it: compose's
# PostgreSQL image starts from `EXTRA_PACKAGES=postgresql-15 ... constellation/postgres-base:15`.
# Does nothing when the image already exists (set REBUILD=1 to force).
set -euo pipefail
image="${1:-constellation/base:bookworm}"
if [[ -z "${REBUILD:-}" ]] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
# Use the mirror apt already uses on this machine.
mirror=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
mirror="${mirror:-http://deb.debian.org/debian}"
root=$(mktemp -d /tmp/constellation-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv${EXTRA_PACKAGES:+,$EXTRA_PACKAGES} bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -n 20 "$root.log" >&2; exit 1; }
# Trim what a model server never needs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
       "$root"/usr/share/locale/* "$root"/usr/share/info/*
tar -C "$root" -c . | docker import --change 'CMD ["python3"]' - "$image" >/dev/null
rm -f "$root.log"
docker image inspect "$image" --format '{{.RepoTags}} {{.Size}} bytes'
