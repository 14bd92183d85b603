"""Wiring for core: settings -> database -> catalog -> servicer -> serve()."""

from __future__ import annotations

import logging
import os

from sqlalchemy.exc import DBAPIError

from core_svc.catalog import Catalog
from core_svc.db import migrate
from core_svc.runs import Runs, RunSettings
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


def run_settings(settings: config.Settings, env: dict[str, str] | None = None) -> RunSettings:
    env = dict(os.environ if env is None else env)
    admin_keys = [key for key, role in settings.api_keys.items() if role == "admin"]
    return RunSettings(
        hosting_address=settings.peers["hosting"],
        orchestrator_address=settings.peers["orchestrator"],
        # Core calls hosting and orchestrator on the user's behalf; the mesh shares one key list.
        metadata=(("authorization", f"Bearer {admin_keys[0]}"),) if admin_keys else (),
        deploy_timeout_s=float(env.get("CONSTELLATION_CORE_DEPLOY_TIMEOUT_S", "1800")),
    )


def build(settings: config.Settings, env: dict[str, str] | None = None) -> MeshServer:
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    catalog = Catalog(engine)
    runs = Runs(engine, catalog, run_settings(settings, env))
    runs.resume()
    return MeshServer(
        settings,
        [registration("core", CoreServicer(catalog, runs), health_checks={"database": catalog.check_database})],
        # Core answers reflection for the whole gateway, so `grpcurl list`
        # through Envoy shows every service of the mesh.
        reflection_names=MESH_SERVICE_NAMES,
        translate_error=translate_error,
        on_stop=[runs.close],
    )


def main() -> None:
    settings = config.load("core")
    logs.configure("core", settings.log_level, settings.log_format)
    build(settings).serve_forever()
