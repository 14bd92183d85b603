"""Wiring for hosting: until its issue lands, every RPC answers UNIMPLEMENTED and says so."""

from __future__ import annotations

from mesh import config, logs
from mesh.server import MeshServer
from mesh.services import placeholder_registration

PENDING = "packaging and deployment land with the model-hosting issue"


def build(settings: config.Settings) -> MeshServer:
    return MeshServer(settings, [placeholder_registration("hosting", PENDING)])


def main() -> None:
    settings = config.load("hosting")
    logs.configure("hosting", settings.log_level, settings.log_format)
    build(settings).serve_forever()
