"""Wiring for orchestrator: until its issue lands, every RPC answers UNIMPLEMENTED and says so."""

from __future__ import annotations

from mesh import config, logs
from mesh.server import MeshServer
from mesh.services import placeholder_registration

PENDING = "Dagster runs land with the orchestrator issue"


def build(settings: config.Settings) -> MeshServer:
    return MeshServer(settings, [placeholder_registration("orchestrator", PENDING)])


def main() -> None:
    settings = config.load("orchestrator")
    logs.configure("orchestrator", settings.log_level, settings.log_format)
    build(settings).serve_forever()
