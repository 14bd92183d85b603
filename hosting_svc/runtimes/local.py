"""Replicas as local processes, for machines without Docker.

Each model gets a venv built from the same wheelhouse as its image, and a
copy of the runtime and model folder. Processes start in their own session so
they outlive a hosting restart; pid files let the next hosting adopt them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import model_runtime
from hosting_svc import packaging
from hosting_svc.domain import HostedModel
from hosting_svc.runtimes import LogLine, Replica, StateChange


class LocalRuntime:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, model: HostedModel) -> Path:
        return self.root / model.id

    def build(self, model: HostedModel, wheelhouse: Path, change: StateChange, log: LogLine) -> str:
        """The venv the replicas run in, from the same wheelhouse an image would install."""
        change("building", "no Docker engine: building a venv for the local runtime")
        self.prepare(model, log)
        return "smoke-testing a local process"

    def prepare(self, model: HostedModel, log: LogLine) -> None:
        home = self._dir(model)
        venv = home / "venv"
        marker = venv / ".complete"
        if not marker.exists():
            wheelhouse = Path(model.manifest["wheelhouse"])
            shutil.rmtree(venv, ignore_errors=True)
            log("creating venv for the local runtime")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
            result = subprocess.run(
                [
                    str(venv / "bin" / "pip"),
                    "install",
                    "--no-index",
                    "--disable-pip-version-check",
                    "--find-links",
                    str(wheelhouse),
                    "-r",
                    str(wheelhouse / "requirements.txt"),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                raise RuntimeError("pip install failed: " + (result.stdout + result.stderr).strip().splitlines()[-1])
            check = subprocess.run([str(venv / "bin" / "pip"), "check"], capture_output=True, text=True, timeout=120)
            if check.returncode != 0:
                raise RuntimeError(f"pip check failed: {check.stdout.strip()}")
            marker.touch()
        packaging.copy_runtime(home / "runtime")
        model_copy = home / "model"
        shutil.rmtree(model_copy, ignore_errors=True)
        shutil.copytree(model.manifest["folder"], model_copy)

    def start(self, model: HostedModel, index: int, port: int) -> Replica:
        home = self._dir(model)
        log_path = home / f"replica-{index}.log"
        env = {
            "PATH": f"{home / 'venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(home / "runtime"),
            "PYTHONUNBUFFERED": "1",
            "MODEL_PORT": str(port),
        }
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                model_runtime.command("127.0.0.1", port, str(home / "model"), str(home / "venv" / "bin" / "python")),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=home,
            )
        (home / f"replica-{index}.pid").write_text(f"{process.pid} {port}\n")
        return Replica(f"pid:{process.pid}", f"127.0.0.1:{port}")

    def start_trial(self, model: HostedModel, port: int) -> Replica:
        return self.start(model, 0, port)

    def alive(self, model: HostedModel, replica_id: str) -> bool:
        pid = int(replica_id.removeprefix("pid:"))
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own exited children
            if done:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, model: HostedModel, replica_id: str) -> None:
        pid = int(replica_id.removeprefix("pid:"))
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.alive(model, replica_id):
            time.sleep(0.05)
        if self.alive(model, replica_id):
            os.kill(pid, signal.SIGKILL)
        for pid_file in self._dir(model).glob("replica-*.pid"):
            if pid_file.read_text().split()[0] == str(pid):
                pid_file.unlink()

    def why_down(self, model: HostedModel, replica_id: str) -> str:
        return ""

    def logs(self, model: HostedModel, replica_id: str) -> str:
        logs = sorted(self._dir(model).glob("replica-*.log"))
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-30:]) if logs else ""

    def running(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for pid_file in self.root.glob("*/replica-*.pid"):
            pid = pid_file.read_text().split()[0]
            try:
                os.kill(int(pid), 0)
            except (ProcessLookupError, ValueError):
                pid_file.unlink()
                continue
            found.setdefault(pid_file.parent.name, []).append(f"pid:{pid}")
        return found

    def discard_trials(self, model_id: str = "") -> None:
        """A trial is an ordinary process with a pid file: reconcile stops it as an orphan."""

    def remove(self, model: HostedModel) -> None:
        shutil.rmtree(self._dir(model), ignore_errors=True)
