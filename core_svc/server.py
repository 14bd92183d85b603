"""Wiring for core: settings -> database -> catalog -> servicer -> serve()."""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError

from core_svc.catalog import Catalog
from core_svc.db import migrate
from core_svc.servicer import CoreServicer
from mesh import config, logs
from mesh.db import create_db_engine
from mesh.errors import DomainError, Unavailable
from mesh.server import MeshServer
from mesh.services import MESH_SERVICE_NAMES, registration

log = logging.getLogger("core")


def translate_error(error: Exception) -> DomainError | None:
    if isinstance(error, DBAPIError) and (error.connection_invalidated or "connect" in str(error.orig).lower()):
        return Unavailable("the catalog database is unreachable; try again shortly")
    return None


def build(settings: config.Settings) -> MeshServer:
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    catalog = Catalog(engine)
    return MeshServer(
        settings,
        [registration("core", CoreServicer(catalog), health_checks={"database": catalog.check_database})],
        # Core answers reflection for the whole gateway, so `grpcurl list`
        # through Envoy shows every service of the mesh.
        reflection_names=MESH_SERVICE_NAMES,
        translate_error=translate_error,
    )


def main() -> None:
    settings = config.load("core")
    logs.configure("core", settings.log_level, settings.log_format)
    build(settings).serve_forever()
