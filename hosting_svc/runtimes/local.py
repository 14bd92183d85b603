"""Replicas as local processes, for machines without Docker.

Each model gets a venv built from the same wheelhouse as its image, and a
copy of the runtime and model folder. Processes start in their own session so
they outlive a hosting restart; pid files let the next hosting adopt them.

Model code is untrusted: each replica (and smoke test) runs confined by
bubblewrap and within resource limits (see sandbox.py) behind a relay on its
port; the pid recorded is the relay's, and the relay's last log line says how
the sandbox ended (why_down reads it). Without bwrap the runtime refuses to run
model code unless CONSTELLATION_HOSTING_ALLOW_UNCONFINED says otherwise.
"""

from __future__ import annotations

import logging
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
from hosting_svc.runtimes import DEFAULT_LIMITS, LogLine, ModelLimits, Replica, StateChange, limit_reached, sandbox
from mesh.errors import FailedPrecondition

log = logging.getLogger("hosting")

RELAY = Path(__file__).with_name("relay.py")
UNCONFINED_REFUSED = (
    "the local runtime runs model code confined by bubblewrap, which is not installed here: install it "
    "(apt-get install bubblewrap), or set CONSTELLATION_HOSTING_ALLOW_UNCONFINED=true to run model code "
    "with hosting's own rights"
)


class LocalRuntime:
    name = "local"
    scales_itself = False

    def __init__(
        self,
        root: Path,
        allow_unconfined: bool = False,
        confine: bool | None = None,
        limits: ModelLimits = DEFAULT_LIMITS,
    ) -> None:
        self.root = root
        self.limits = limits
        self.confine = sandbox.available() if confine is None else confine
        self.allow_unconfined = allow_unconfined
        if not self.confine and allow_unconfined:
            log.warning("bubblewrap is not installed: local model processes run unconfined, with hosting's rights")

    def _check_confinement(self) -> None:
        if not self.confine and not self.allow_unconfined:
            raise FailedPrecondition(UNCONFINED_REFUSED)

    def _dir(self, model: HostedModel) -> Path:
        return self.root / model.id

    def build(self, model: HostedModel, wheelhouse: Path, change: StateChange, log: LogLine) -> str:
        """The venv the replicas run in, from the same wheelhouse an image would install."""
        self._check_confinement()
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
            sandbox.make_readable(venv)
            marker.touch()
        packaging.copy_runtime(home / "runtime")
        model_copy = home / "model"
        shutil.rmtree(model_copy, ignore_errors=True)
        shutil.copytree(model.manifest["folder"], model_copy, symlinks=True)
        sandbox.make_readable(home / "runtime", model_copy)

    def start(self, model: HostedModel, index: int, port: int, cpu_s: int = 0) -> Replica:
        self._check_confinement()
        home = self._dir(model)
        log_path = home / f"replica-{index}.log"
        with open(log_path, "ab") as log_file:
            if self.confine:
                limits = sandbox.Limits(
                    self.limits.memory_bytes(model), self.limits.sandbox_processes, self.limits.open_files, cpu_s
                )
                process = self._start_confined(home, port, limits, log_file)
            else:
                process = subprocess.Popen(
                    model_runtime.command(
                        "127.0.0.1", port, str(home / "model"), str(home / "venv" / "bin" / "python")
                    ),
                    env={
                        "PATH": f"{home / 'venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                        "PYTHONPATH": str(home / "runtime"),
                        "PYTHONUNBUFFERED": "1",
                        "MODEL_PORT": str(port),
                    },
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=home,
                )
        (home / f"replica-{index}.pid").write_text(f"{process.pid} {port}\n")
        return Replica(f"pid:{process.pid}", f"127.0.0.1:{port}")

    def _start_confined(self, home: Path, port: int, limits: sandbox.Limits, log_file) -> subprocess.Popen:
        """The relay on 127.0.0.1:port, which starts the sandboxed model server on its Unix socket."""
        venv = home / "venv"
        prefix = sandbox.python_prefix(venv)
        folders = {
            str(prefix): prefix,
            "/opt/venv": venv,
            "/opt/runtime": home / "runtime",
            "/opt/model": home / "model",
        }
        env = {
            "PATH": "/opt/venv/bin:/usr/bin:/bin",
            "PYTHONPATH": "/opt/runtime",
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            "MODEL_PORT": str(port),
        }
        serve = model_runtime.command(f"unix:{sandbox.SOCKET}", port, "/opt/model", "/opt/venv/bin/python")
        inner = sandbox.command(folders, serve, env, limits)
        return subprocess.Popen(
            [sys.executable, str(RELAY), str(port), sandbox.SOCKET, "--", *inner],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=home,
        )

    def resolve(self, model: HostedModel, replica: Replica) -> list[Replica]:
        return [replica]

    def start_trial(self, model: HostedModel, port: int) -> Replica:
        return self.start(model, 0, port, cpu_s=self.limits.smoke_cpu_s)

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
        """The relay's last line when the sandbox ended (a limit's signal, an exit code), or what ran out."""
        tail = self.logs(model, replica_id)
        last = tail.rstrip().rpartition("\n")[2]
        reached = limit_reached(tail, self.limits.memory_for(model), self.limits.sandbox_processes)
        return reached or (last if last.startswith("model sandbox ") else "")

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
