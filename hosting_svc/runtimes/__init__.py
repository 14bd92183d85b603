"""Where model replicas run. Every runtime serves the same Open Inference Protocol server."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Protocol

from hosting_svc.domain import HostedModel


@dataclass
class Replica:
    replica_id: str  # container id, or "pid:<n>" for local processes
    address: str  # host:port


class Runtime(Protocol):
    name: str

    def prepare(self, model: HostedModel, log) -> None:  # type: ignore[no-untyped-def]
        """Make what the replicas need (image or venv); may be a no-op."""

    def start(self, model: HostedModel, index: int, port: int) -> Replica: ...

    def alive(self, model: HostedModel, replica_id: str) -> bool:
        """Whether the replica's process or container is running (it may still be loading)."""

    def stop(self, model: HostedModel, replica_id: str) -> None: ...

    def logs(self, model: HostedModel, replica_id: str) -> str: ...

    def running(self) -> dict[str, list[str]]:
        """model id -> replica ids this runtime holds now, found by labels or pid files."""

    def remove(self, model: HostedModel) -> None:
        """Delete what prepare() made for the model."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
