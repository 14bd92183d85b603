"""Deploying: a packaged model's replicas started on a runtime, with a rollout that keeps traffic safe.

DeployModel checks the request synchronously, then a background thread
starts the replicas and waits for each to say ModelReady: DEPLOYING ->
HEALTHY. A rollout that never gets healthy is stopped and reported (FAILED);
another version of the model serving in the same environment keeps serving
until the new one is HEALTHY, and only then is retired to READY.

`replicas` (model id -> its live replicas) is what the monitor watches and
what a restarted hosting's reconcile fills with adopted replicas.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import partial

from clients.inference import InferenceClient
from hosting_svc.domain import IN_PROGRESS, RUNTIMES, Endpoint, HostedModel
from hosting_svc.journal import Journal, now
from hosting_svc.runtimes import Replica, Runtime, free_port
from hosting_svc.settings import HostingSettings
from mesh.errors import FailedPrecondition, InvalidArgument

ENVIRONMENT = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def runtime_unavailable(runtime: str) -> str:
    if runtime == "docker":
        return "the Docker engine does not answer here; start dockerd or deploy with the local runtime"
    if runtime == "modal":
        return "the Modal runtime needs MODAL_TOKEN_ID and MODAL_TOKEN_SECRET in hosting's environment"
    if runtime == "kubernetes":
        return "the kubernetes runtime is off: set CONSTELLATION_HOSTING_KUBERNETES to kserve or deployment"
    if runtime == "swarm":
        return (
            "the Docker engine is not a Swarm manager: run `docker swarm init` (or CONSTELLATION_HOSTING_SWARM is off)"
        )
    return f"runtime {runtime} is not available"


class Deployer:
    def __init__(
        self, journal: Journal, settings: HostingSettings, runtimes: dict[str, Runtime], default_runtime: str
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.runtimes = runtimes
        self.default_runtime = default_runtime
        self.replicas: dict[str, list[Replica]] = {}  # model id -> live replicas (runtime ids)
        # The monitor's (set by Hosting): this instance's lease on watching a deployment, and who holds one.
        self.claim: Callable[[str], bool] = lambda model_id: True
        self.holder_of: Callable[[str], str] = lambda model_id: ""

    def deploy(self, model_id: str, environment: str, replicas: int, runtime: str) -> HostedModel:
        model = self.journal.get(model_id)
        environment = environment or "default"
        replicas = replicas or 1
        runtime = runtime or model.runtime or self.default_runtime
        if not ENVIRONMENT.match(environment):
            raise InvalidArgument.field("environment", f"{environment!r}: lowercase letters, digits and '-'")
        if not 1 <= replicas <= 16:
            raise InvalidArgument.field("replicas", "must be between 1 and 16")
        if runtime not in RUNTIMES:
            raise InvalidArgument.field("runtime", f"one of {', '.join(RUNTIMES)}")
        if runtime not in self.runtimes:
            raise FailedPrecondition(runtime_unavailable(runtime))
        label = f"{model.name}:{model.version}"
        if model.state in IN_PROGRESS:
            raise FailedPrecondition(f"{label} is {model.state}; wait for it to finish")
        if model.state not in ("ready", "healthy", "unhealthy", "failed") or not model.manifest.get("wheelhouse"):
            raise FailedPrecondition(f"{label} is {model.state}; package it successfully first")
        if runtime in ("docker", "kubernetes", "swarm") and not model.image:
            raise FailedPrecondition(
                f"{label} has no image (it was packaged without Docker); package it again with Docker running"
            )
        if not self.claim(model.id):
            raise FailedPrecondition(
                f"{label}'s deployment is watched by another hosting instance ({self.holder_of(model.id)}); call "
                "again (the gateway sends calls to each instance in turn), or after that instance stops"
            )
        model.runtime, model.environment, model.replicas = runtime, environment, replicas
        self.journal.emit(model, "deploying", f"starting {replicas} replica(s) on {runtime} in {environment}")
        threading.Thread(target=self._deploy, args=(model.id,), name=f"deploy-{model.name}", daemon=True).start()
        return model

    def _deploy(self, model_id: str) -> None:
        emit = self.journal.emit
        with self.journal.lock(model_id):
            model = self.journal.get(model_id)
            runtime = self.runtimes[model.runtime]
            previous = self._live_sibling(model)
            started: list[Replica] = []
            try:
                # A runtime that scales itself changes its object in place (scale, canary); others start afresh.
                self.stop_replicas(model, keep=runtime.name if runtime.scales_itself else "")
                runtime.prepare(model, lambda line: emit(model, log_line=line))
                for index in range(1 if runtime.scales_itself else model.replicas):
                    started.extend(runtime.resolve(model, runtime.start(model, index, free_port())))
                for replica in started:
                    with InferenceClient(replica.address, model.name) as client:
                        client.wait_ready(
                            self.settings.ready_timeout_s, partial(runtime.alive, model, replica.replica_id)
                        )
            except Exception as error:  # a failed rollout is stopped and reported
                tail = runtime.logs(model, started[-1].replica_id) if started else ""
                for replica in started:
                    runtime.stop(model, replica.replica_id)
                self.replicas.pop(model.id, None)
                model.endpoints = []
                kept = f"; traffic stays on {previous.name}:{previous.version}" if previous else ""
                emit(model, "failed", f"deployment never became healthy: {error}{kept}", log_line=tail[-2000:])
                if previous:
                    emit(
                        previous,
                        message=f"{model.name}:{model.version} failed to deploy; {previous.version} keeps serving",
                    )
                return
            self.replicas[model.id] = started
            model.endpoints = [Endpoint(r.address, r.replica_id[:12], True) for r in started]
            model.deployed_at = now()
            emit(model, "healthy", f"{len(started)} replica(s) serving: {', '.join(r.address for r in started)}")
        if previous:
            self._retire(previous, f"superseded by {model.version}")

    def _live_sibling(self, model: HostedModel) -> HostedModel | None:
        """Another version of the same model serving in the same environment."""
        for other in self.journal.store.all():
            same = other.id != model.id and other.name == model.name and other.environment == model.environment
            if same and other.state in ("healthy", "unhealthy"):
                return other
        return None

    def _retire(self, model: HostedModel, reason: str) -> None:
        with self.journal.lock(model.id):
            self.stop_replicas(model)
            model.endpoints = []
            self.journal.emit(model, "ready", f"stopped: {reason}")

    def stop_replicas(self, model: HostedModel, keep: str = "") -> int:
        """Stop the model's replicas on every runtime but `keep` (a redeploy may switch runtimes); returns how
        many."""
        self.replicas.pop(model.id, None)
        stopped = 0
        for runtime in self.runtimes.values():
            if runtime.name == keep:
                continue
            for replica_id in runtime.running().get(model.id, []):
                runtime.stop(model, replica_id)
                stopped += 1
        return stopped

    def stop_all(self, lock_wait_s: float = 5.0) -> tuple[list[HostedModel], int]:
        """Stop every replica this hosting runs: serving models go back to READY (deployable again), and any
        other replica (a rollout or smoke test in progress, an orphan) is stopped too. Returns the models
        stopped and how many other replicas were."""
        stopped = []
        for model in self.journal.store.all():
            if model.state not in ("healthy", "unhealthy", "deploying"):
                continue
            lock = self.journal.lock(model.id)
            held = lock.acquire(timeout=lock_wait_s)  # a rollout holds it until ready: it fails once its replicas go
            try:
                model = self.journal.get(model.id)
                self.stop_replicas(model)
                if model.state in ("healthy", "unhealthy"):
                    model.endpoints = []
                    self.journal.emit(model, "ready", "stopped: hosting was asked to stop every endpoint")
                    stopped.append(model)
            finally:
                if held:
                    lock.release()
        others = 0
        for runtime in self.runtimes.values():
            runtime.discard_trials()
            for model_id, replica_ids in runtime.running().items():
                self.replicas.pop(model_id, None)
                owner = self.journal.store.get(model_id) or HostedModel(id=model_id, name="", version="")
                for replica_id in replica_ids:
                    runtime.stop(owner, replica_id)
                    others += 1
        return stopped, others
