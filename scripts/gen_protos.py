"""Generate Python messages, gRPC stubs and .pyi stubs from protos/ into gen/python,
and the web console's TypeScript (buf.gen.yaml, protoc-gen-es) into gen/ts.

Usage: python scripts/gen_protos.py [--out DIR] [--check]
--check generates into a temporary folder and fails when gen/python or gen/ts differs.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DEFAULT_OUT = ROOT / "gen" / "python"
TS_OUT = ROOT / "gen" / "ts"
BUF = ROOT / "node_modules" / ".bin" / "buf"


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # The mypy-protobuf plugins live beside this interpreter (the venv's bin/).
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Regular packages, so that `constellation.core.v1` imports the same way
    # from an editable install, a wheel or PYTHONPATH.
    for directory in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        if directory != out:
            (directory / "__init__.py").touch()


def generate_ts(base: Path) -> None:
    """gen/ts under `base` (buf prepends it to buf.gen.yaml's `out`); the plugin is node_modules' protoc-gen-es."""
    if not BUF.exists():
        raise SystemExit("buf is missing: run `npm ci` (make setup does)")
    result = subprocess.run([str(BUF), "generate", "--output", str(base)], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"buf generate failed:\n{result.stderr}")


def differences(left: Path, right: Path) -> list[str]:
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [f"only in {cmp.left}: {n}" for n in cmp.left_only]
    found += [f"only in {cmp.right}: {n}" for n in cmp.right_only]
    found += [f"differs: {Path(cmp.left) / n}" for n in cmp.diff_files]
    for name in cmp.common_dirs:
        found += differences(left / name, right / name)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not args.check:
        shutil.rmtree(args.out, ignore_errors=True)
        generate(args.out)
        generate_ts(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "python")
        generate_ts(Path(tmp))
        stale = differences(Path(tmp) / "python", args.out) if args.out.exists() else [f"{args.out} is missing"]
        stale += differences(Path(tmp) / "gen" / "ts", TS_OUT) if TS_OUT.exists() else [f"{TS_OUT} is missing"]
    if stale:
        print("generated code is stale; run `make gen`:", *stale, sep="\n  ", file=sys.stderr)
        return 1
    print("gen/python and gen/ts match protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
