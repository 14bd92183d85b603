"""Turning a validated model folder into a Docker build context (pure: no engine calls).

Layer order keeps rebuilds cheap: the base image, then the dependency layer
(wheelhouse + pip install + pip check), then the runtime, then the model's
own files. A code-only change reuses every layer up to the last COPY.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("grpcio", "grpcio-health-checking", "protobuf", "numpy", "pyyaml", "packaging")
MODEL_PORT = 8001
MODEL_USER = 10001


@dataclass(frozen=True)
class BuildContext:
    path: Path
    requirements: list[str]
    manifest_digest: str


def runtime_requirements(lock: Path = ROOT / "requirements.lock") -> list[str]:
    """The runtime's own dependencies, pinned to the versions the mesh is locked to."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    missing = [p for p in RUNTIME_PACKAGES if p not in pins]
    if missing:
        raise RuntimeError(f"requirements.lock pins none of: {', '.join(missing)}")
    return [f"{name}=={pins[name]}" for name in RUNTIME_PACKAGES]


def manifest_digest(folder: Path) -> str:
    return "sha256:" + hashlib.sha256((folder / "constellation.yaml").read_bytes()).hexdigest()


def requirements_for(model_requirements: list[str]) -> list[str]:
    """Runtime pins first, then the model's; pip's resolver reports any conflict between them."""
    return [*runtime_requirements(), *model_requirements]


def download_wheelhouse(requirements: list[str], cache_root: Path, log) -> Path:
    """`pip download` every wheel the image needs into a folder keyed by the requirement set.

    The build itself then runs with the network off, installing only from
    this folder. Binary wheels for CPython 3.11 on manylinux x86_64, the base
    image's interpreter.
    """
    key = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:16]
    target = cache_root / key
    done = target / ".complete"
    if done.exists():
        log(f"wheelhouse {key} cached")
        return target
    target.mkdir(parents=True, exist_ok=True)
    (target / "requirements.txt").write_text("\n".join(requirements) + "\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "manylinux_2_17_x86_64",
        "--platform",
        "manylinux_2_28_x86_64",
        "--platform",
        "linux_x86_64",
        "--find-links",
        str(cache_root / "all"),
        "-d",
        str(target),
        "-r",
        str(target / "requirements.txt"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        lines = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if line.strip() and not line.startswith("WARNING: Location")
        ]
        raise DependencyError(_conflict_summary(lines), lines[-20:])
    # Keep every wheel in one shared folder too, so later sets resolve offline.
    shared = cache_root / "all"
    shared.mkdir(exist_ok=True)
    for wheel in target.glob("*.whl"):
        if not (shared / wheel.name).exists():
            shutil.copy2(wheel, shared / wheel.name)
    done.touch()
    log(f"wheelhouse {key}: {len(list(target.glob('*.whl')))} wheels")
    return target


class DependencyError(Exception):
    """The requirement set cannot be resolved; `summary` names the conflicting pair when pip says it."""

    def __init__(self, summary: str, log_tail: list[str]) -> None:
        super().__init__(summary)
        self.summary = summary
        self.log_tail = log_tail


def _conflict_summary(lines: list[str]) -> str:
    text = "\n".join(lines)
    causes = re.findall(r"^\s+(\S+ \S+ depends on .+|The user requested .+)$", text, flags=re.MULTILINE)
    if causes:
        return "conflicting requirements: " + "; ".join(c.strip() for c in causes[:4])
    no_match = re.search(r"No matching distribution found for (.+)", text)
    if no_match:
        return f"no installable wheel for {no_match.group(1).strip()} (CPython 3.11, manylinux x86_64)"
    return "could not download the requirements: " + (lines[-1] if lines else "pip failed")


def render_dockerfile(base_image: str, labels: dict[str, str]) -> str:
    label_lines = " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f"""# Rendered by hosting_svc.packaging: do not edit.
FROM {base_image}
RUN python3 -m venv /opt/venv && useradd --uid {MODEL_USER} --no-create-home --shell /usr/sbin/nologin model
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/opt/runtime
# Dependencies: their own layer, installed offline from the wheelhouse.
COPY wheelhouse/ /tmp/wheelhouse/
RUN pip install --no-index --no-cache-dir --disable-pip-version-check --find-links /tmp/wheelhouse \\
      -r /tmp/wheelhouse/requirements.txt \\
 && pip check \\
 && pip list --format=freeze --disable-pip-version-check > /opt/installed-packages.txt \\
 && rm -rf /tmp/wheelhouse
COPY runtime/ /opt/runtime/
COPY model/ /opt/model/
USER {MODEL_USER}
EXPOSE {MODEL_PORT}
HEALTHCHECK --interval=2s --timeout=2s --start-period=5s --retries=3 \\
  CMD ["python", "/opt/runtime/healthcheck.py"]
LABEL {label_lines}
CMD ["python", "-m", "model_runtime", "--model-dir", "/opt/model", "--host", "127.0.0.1", "--port", "{MODEL_PORT}"]
"""


HEALTHCHECK_SCRIPT = '''"""Docker HEALTHCHECK: the model server answers SERVING on MODEL_PORT (default 8001)."""
import os, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
port = os.environ.get("MODEL_PORT", "8001")
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.5)
    except grpc.RpcError:
        sys.exit(1)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
'''


def copy_runtime(target: Path) -> None:
    """The model server and the generated KServe V2 messages it serves."""
    target.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "model_runtime", target / "model_runtime", ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(ROOT / "gen" / "python" / "inference", target / "inference", ignore=ignore, dirs_exist_ok=True)
    (target / "healthcheck.py").write_text(HEALTHCHECK_SCRIPT)


def prepare_context(model_folder: Path, wheelhouse: Path, work: Path, base_image: str, labels: dict[str, str]) -> Path:
    """A build context: Dockerfile, wheelhouse/, runtime/, model/."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(wheelhouse, work / "wheelhouse", ignore=shutil.ignore_patterns(".complete"))
    copy_runtime(work / "runtime")
    shutil.copytree(model_folder, work / "model", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    (work / "Dockerfile").write_text(render_dockerfile(base_image, labels))
    return work
