"""Wiring for orchestrator: settings -> Dagster instance -> run manager -> servicer -> serve().

At start-up, runs an earlier orchestrator left active are reconciled: those
whose worker still runs are adopted, the others are marked failed (or
canceled, if a cancel was under way). On stop, workers keep running; the next
start adopts them.
"""

from __future__ import annotations

import logging
import os

from sqlalchemy.exc import DBAPIError, OperationalError

from clients.roots import StorageRoots
from mesh import config, logs
from mesh.errors import DomainError, Unavailable
from mesh.server import MeshServer
from mesh.services import registration
from orchestrator_svc import settings as orchestrator_settings
from orchestrator_svc.instance import open_instance
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
    runs = RunManager(instance, own, StorageRoots.from_env(env))
    runs.reconcile()
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
