#!/usr/bin/env bash
# What compose's images (built with the network off) need from the host, each step skipped when done:
#   the base images (Debian bookworm: python3 for the mesh, postgresql-15 for the database),
#   build/wheelhouse: the runtime part of requirements.lock as CPython 3.11 manylinux wheels,
#   web/dist: the console the gateway image serves (npm run build).
# Then `docker-compose build` builds the images in seconds when only code changed (docker/mesh.Dockerfile
# installs the wheelhouse in its own layer).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
scripts/make_base_image.sh constellation/base:bookworm
EXTRA_PACKAGES=postgresql-15 scripts/make_base_image.sh constellation/postgres-base:15
mkdir -p build/wheelhouse
"$PY" scripts/runtime_requirements.py requirements.lock > build/requirements.runtime.txt.new
if ! cmp -s build/requirements.runtime.txt.new build/requirements.runtime.txt || [[ ! -e build/wheelhouse/.complete ]]; then
  rm -f build/wheelhouse/.complete
  platforms=(--platform manylinux2014_x86_64 --platform linux_x86_64)
  for glibc in 17 24 26 27 28 31 34 35 36; do platforms+=(--platform "manylinux_2_${glibc}_x86_64"); done
  "$PY" -m pip download --disable-pip-version-check --no-input --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp "${platforms[@]}" \
    -d build/wheelhouse -r build/requirements.runtime.txt.new 2>&1 | { grep -v '^WARNING: Location' || true; }
  mv build/requirements.runtime.txt.new build/requirements.runtime.txt
  # Wheels of pins no longer in the lock would only grow the build context.
  "$PY" - <<'PYEOF'
from pathlib import Path
import re
pins = {re.sub(r"[-_.]+", "_", line.split("==")[0].split("[")[0]).lower() + "-" + line.split("==")[1].split()[0]
        for line in Path("build/requirements.runtime.txt").read_text().splitlines() if "==" in line}
for wheel in Path("build/wheelhouse").glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    if f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}" not in pins:
        wheel.unlink()
PYEOF
  touch build/wheelhouse/.complete
else
  rm build/requirements.runtime.txt.new
fi
if [[ ! -e web/dist/index.html || -n "$(find web/src web/index.html -newer web/dist/index.html -print -quit)" ]]; then
  npm run --silent build
fi
