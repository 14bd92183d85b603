"""Wiring for orchestrator: settings -> Dagster instance -> run manager -> servicer -> serve().

Runs are owned by lease (runs.py; the leases live on the Dagster instance's
database, so every orchestrator sharing that instance sees them). At start-up
and every CONSTELLATION_LEASE_RENEW_S after, active runs no orchestrator owns
are taken over: those whose worker still runs are adopted, the others are
re-executed from their unfinished steps (or canceled, if a cancel was under
way). On stop, workers keep
running and their leases are released; another orchestrator (or the next
start) adopts them.
"""

from __future__ import annotations

import logging
import os

from sqlalchemy.exc import DBAPIError, OperationalError

from clients.roots import StorageRoots
from mesh import config, logs
from mesh.errors import DomainError, Unavailable
from mesh.leases import Leases
from mesh.server import MeshServer
from mesh.services import registration
from orchestrator_svc import settings as orchestrator_settings
from orchestrator_svc.instance import lease_engine, open_instance
from orchestrator_svc.runs import RunManager
from orchestrator_svc.servicer import OrchestratorServicer

log = logging.getLogger("orchestrator")


def translate_error(error: Exception) -> DomainError | None:
    if isinstance(error, (OperationalError, DBAPIError)):
        return Unavailable("the Dagster instance's storage does not answer; try again shortly")
    return None


class OrchestratorServer(MeshServer):
    """MeshServer plus the run manager it must close on stop."""

    runs: RunManager

    def stop(self, grace: float | None = None) -> None:
        self.runs.stopping.set()
        super().stop(grace)
        self.runs.close()
        self.runs.instance.dispose()


def build(settings: config.Settings, env: dict[str, str] | None = None) -> OrchestratorServer:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Dagster's storage migrations at every start
    env = dict(os.environ) if env is None else env
    own = orchestrator_settings.load(env)
    instance = open_instance(own)
    leases = Leases(lease_engine(own), settings.lease_ttl_s)
    runs = RunManager(instance, own, StorageRoots.from_env(env), leases=leases, lease_renew_s=settings.lease_renew_s)
    runs.reconcile()
    runs.keep_leases()
    server = OrchestratorServer(
        settings,
        [registration("orchestrator", OrchestratorServicer(runs), health_checks={"dagster": runs.check_instance})],
        translate_error=translate_error,
    )
    server.runs = runs
    return server


def main() -> None:
    settings = config.load_or_exit("orchestrator")
    logs.configure("orchestrator", settings.log_level, settings.log_format)
    build(settings).serve_forever()
