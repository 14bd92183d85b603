"""Where model replicas run. Every runtime serves the same Open Inference Protocol server.

A `Runtime` is the only place hosting touches an engine (Docker, local
processes, Modal, Kubernetes): the builder, the deployer, the monitor and the reconciler
call these methods and nothing below them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hosting_svc.domain import HostedModel
from model_runtime.manifest import memory_bytes

LogLine = Callable[[str], object]
# (state, message): a state change to record while building, e.g. ("building", "building on ...").
StateChange = Callable[[str, str], object]


@dataclass(frozen=True)
class ModelLimits:
    """What one model's code may use, from hosting's settings; constellation.yaml's resources.memory comes first."""

    memory: str = "2g"  # when the manifest names none
    sandbox_processes: int = 1024  # the local runtime's RLIMIT_NPROC (all sandboxes together)
    open_files: int = 1024
    smoke_cpu_s: int = 300  # CPU time of a smoke test's model process

    def memory_for(self, model: HostedModel) -> str:
        return str(model.manifest.get("resources", {}).get("memory") or self.memory)

    def memory_bytes(self, model: HostedModel) -> int:
        return memory_bytes(self.memory_for(model))


DEFAULT_LIMITS = ModelLimits()


def limit_reached(log_tail: str, memory: str, processes: int) -> str:
    """Which limit a model's log shows it ran into (allocations and forks that failed), or ""."""
    if "MemoryError" in log_tail:
        return f"ran out of memory (limit {memory}; raise resources.memory)"
    if "Resource temporarily unavailable" in log_tail or "can't start new thread" in log_tail:
        return f"hit the process limit ({processes} processes and threads)"
    return ""


@dataclass
class Replica:
    replica_id: str  # container id, or "pid:<n>" for local processes
    address: str  # host:port


class Runtime(Protocol):
    name: str
    # True: one start() per deployment and the engine runs and scales the replicas (Kubernetes); False: one
    # start() per replica.
    scales_itself: bool

    def build(self, model: HostedModel, wheelhouse: Path, change: StateChange, log: LogLine) -> str:
        """Make the model's artifact (image or venv) from its folder and wheelhouse; may set model.image and
        model.installed_packages. Returns what to say while smoke-testing it. Raises images.BuildFailed,
        FailedPrecondition or RuntimeError with the reason."""

    def prepare(self, model: HostedModel, log: LogLine) -> None:
        """Make what the replicas need (image or venv) before a deployment; may be a no-op."""

    def start(self, model: HostedModel, index: int, port: int) -> Replica: ...

    def resolve(self, model: HostedModel, replica: Replica) -> list[Replica]:
        """The replicas callers reach behind what start() returned: itself, or each replica of an engine that
        scales itself and gives each its own address (Swarm)."""

    def start_trial(self, model: HostedModel, port: int) -> Replica:
        """A throwaway replica for the smoke test: never restarted, removed by stop() or discard_trials()."""

    def alive(self, model: HostedModel, replica_id: str) -> bool:
        """Whether the replica's process or container is running (it may still be loading)."""

    def why_down(self, model: HostedModel, replica_id: str) -> str:
        """What the runtime knows about a replica that does not answer (killed for memory, an exit code); may be ""."""

    def stop(self, model: HostedModel, replica_id: str) -> None: ...

    def logs(self, model: HostedModel, replica_id: str) -> str: ...

    def running(self) -> dict[str, list[str]]:
        """model id -> replica ids this runtime holds now, found by labels or pid files."""

    def discard_trials(self, model_id: str = "") -> None:
        """Remove smoke-test replicas left behind (by a hosting that died mid-build); of one model, or all."""

    def remove(self, model: HostedModel) -> None:
        """Delete what build() and prepare() made for the model, and any replica of it left."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
