"""Wiring for core: settings -> database -> catalog, runs, accounts -> servicers -> serve()."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy.exc import DBAPIError

from clients.roots import StorageRoots
from core_svc.accounts import Accounts
from core_svc.audit import AuditStore
from core_svc.catalog import Catalog
from core_svc.db import migrate
from core_svc.runs import Runs
from core_svc.servicer import AuditServicer, CoreServicer, IdentityServicer
from core_svc.settings import CoreSettings
from core_svc.stac import StacReader
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


def build(settings: config.Settings, env: Mapping[str, str] | None = None) -> MeshServer:
    """Core on the bootstrap's `settings`, with its own read from `env` (default: the process environment)."""
    core_settings = CoreSettings.load(settings, env)  # a bad value fails here, before the database is touched
    roots = StorageRoots.from_env(env, home_raw=settings.home_raw)
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    catalog = Catalog(engine, roots)
    accounts = Accounts(engine)
    runs = Runs(engine, catalog, core_settings)
    runs.resume()
    runs.start_keeper()
    audit = AuditStore(engine, core_settings.audit_retention_days)
    audit.start_pruning()
    return MeshServer(
        settings,
        [
            registration(
                "core",
                CoreServicer(catalog, runs, StacReader(roots, core_settings.stac_limits)),
                health_checks={"database": catalog.check_database},
            ),
            registration("identity", IdentityServicer(accounts)),
            registration("audit", AuditServicer(audit)),
        ],
        # Core answers reflection for the whole gateway, so `grpcurl list`
        # through Envoy shows every service of the mesh.
        reflection_names=MESH_SERVICE_NAMES,
        translate_error=translate_error,
        on_stop=[runs.close],
        user_keys=accounts.authenticate,  # core checks user keys in its own database
        audit_sink=audit,  # core's own records go straight to its database
    )


def main() -> None:
    settings = config.load_or_exit("core")
    logs.configure("core", settings.log_level, settings.log_format)
    build(settings).serve_forever()
