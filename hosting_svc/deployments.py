"""Hosting's domain, as one facade over its jobs: the servicer calls `Hosting` and nothing else.

- building.py: PackageModel (source -> manifest -> artifact -> smoke test)
- deploying.py: DeployModel (replicas, rollout, retiring the previous version)
- monitor.py: health of every deployed replica, restarts of local processes,
  scaling with demand (scaling.py decides)
- reconcile.py: what a restarted hosting adopts, fails and removes
- journal.py: every state change persisted as an event before anyone sees it
  (see domain.py for the state machine)

Long work (builds, smoke tests, rollouts) runs on background threads. Every
engine call goes through a `Runtime` (runtimes/).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from hosting_svc import compose
from hosting_svc.building import Builder
from hosting_svc.deploying import Deployer
from hosting_svc.domain import STATES, DeploymentEvent, HostedModel
from hosting_svc.journal import Journal
from hosting_svc.monitor import Monitor
from hosting_svc.reconcile import reconcile
from hosting_svc.runtimes import Runtime
from hosting_svc.settings import HostingSettings
from hosting_svc.sources import Source
from hosting_svc.store import Store
from mesh.errors import FailedPrecondition, InvalidArgument
from mesh.filters import parse_filter
from mesh.leases import Leases

log = logging.getLogger("hosting")

FILTER_FIELDS = ("name", "version", "state")
Models = list[HostedModel]  # `list` is also a method of Hosting


class Hosting:
    def __init__(self, store: Store, settings: HostingSettings, runtimes: dict[str, Runtime]) -> None:
        self.store = store
        self.runtimes = runtimes
        self.journal = Journal(store)
        self.builder = Builder(self.journal, settings, runtimes)
        self.deployer = Deployer(self.journal, settings, runtimes, self.builder.runtime.name)
        self.builder.stop_replicas = self.deployer.stop_replicas
        self.monitor = Monitor(
            self.journal, settings, runtimes, self.deployer.replicas, Leases(store.engine, settings.lease_ttl_s)
        )
        self.deployer.claim, self.deployer.holder_of = self.monitor.claim, self.monitor.holder_of
        self.journal.working = self.monitor
        self.settings = settings

    @property
    def settings(self) -> HostingSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: HostingSettings) -> None:
        """New settings reach every job (tests shorten the monitor's interval this way)."""
        self._settings = settings
        self.builder.settings = self.deployer.settings = self.monitor.settings = settings

    # Reading

    def get(self, model_id: str) -> HostedModel:
        return self.journal.get(model_id)

    def list(self, filter_text: str = "") -> list[HostedModel]:
        """Every hosted model in id order, or those matching `filter_text` (see mesh/filters.py):
        fields name, version and state (a state name such as "healthy")."""
        wanted = parse_filter(filter_text, FILTER_FIELDS)
        state = wanted["state"].lower() if "state" in wanted else None
        if state is not None and state not in STATES:
            raise InvalidArgument.field("filter", f"state {wanted['state']!r} is not one of {', '.join(STATES)}")
        models = self.store.all(wanted.get("name"), wanted.get("version"))
        return [m for m in models if m.state == state] if state is not None else models

    def watch(self, model_id: str, after: int, keep_going: Callable[[], bool]) -> Iterator[DeploymentEvent]:
        self.get(model_id)
        for event in self.store.follow(model_id, after, lambda: keep_going() and not self.monitor.stopping.is_set()):
            yield event
            if event.state == "deleted":
                return

    def note(self, model: HostedModel, message: str) -> None:
        """An event that changes no state (progress of a push, say)."""
        self.journal.emit(model, message=message)

    # Jobs

    def package(self, name: str, version: str, source: Source, card: dict) -> HostedModel:
        return self.builder.package(name, version, source, card)

    def deploy(self, model_id: str, environment: str, replicas: int, runtime: str) -> HostedModel:
        return self.deployer.deploy(model_id, environment, replicas, runtime)

    def delete(self, model_id: str) -> None:
        model = self.get(model_id)
        with self.journal.lock(model_id):
            self.deployer.stop_replicas(model)
            for runtime in self.runtimes.values():
                runtime.remove(model)
            self.builder.remove(model)
            model.endpoints = []
            self.journal.emit(model, "deleted", f"{model.name}:{model.version} deleted")
            self.store.delete(model.id)

    def export_compose(self, model_ids: Sequence[str]) -> str:
        if model_ids:
            chosen = [self.get(i) for i in model_ids]
        else:
            chosen = [m for m in self.store.all() if m.state in ("healthy", "unhealthy")]
        without_image = [m.id for m in chosen if not m.image]
        if without_image:
            raise FailedPrecondition(
                f"no image for {', '.join(without_image)}: only Docker-packaged models can be exported"
            )
        if not chosen:
            raise FailedPrecondition("no deployed model to export; deploy one or name model_ids")
        return compose.render(chosen)

    def stop_deployments(self) -> tuple[Models, int]:
        """Stop every endpoint (see Deployer.stop_all); the models stopped and the count of other replicas."""
        return self.deployer.stop_all()

    # Life cycle

    def reconcile(self) -> None:
        """After a restart: see reconcile.py. Not while other instances run (their work is in progress): this
        one joins them, and its monitor takes the deployments whose instance dies."""
        if self.monitor.join():
            log.info("other hosting instances run: joining them without reconciling")
            return
        reconcile(self.journal, self.runtimes, self.deployer.replicas)

    def start_monitor(self) -> None:
        self.monitor.start()

    def close(self) -> None:
        self.monitor.stop()
