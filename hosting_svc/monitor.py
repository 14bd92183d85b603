"""The health monitor: every deployed replica's gRPC health, checked every `monitor_interval_s`.

A replica that stops answering turns its model UNHEALTHY (with what the
runtime knows: killed for memory, an exit code), its recovery turns it
HEALTHY again, and a replica that exited is started again: a local process,
or a Docker container the engine's restart policy leaves stopped (one killed
by hand; the policy restarts a crashed one itself).

Each health answer carries the replica's load; for runtimes that do not scale
themselves (local, Docker, Modal) the monitor scales a HEALTHY model by one
replica at a time as scaling.Scaler decides, each change a deployment event
with the new endpoint list.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial

from clients.inference import InferenceClient
from hosting_svc.domain import Endpoint, HostedModel
from hosting_svc.journal import Journal
from hosting_svc.runtimes import Replica, Runtime, free_port
from hosting_svc.scaling import Decision, Scaler
from hosting_svc.settings import HostingSettings
from model_runtime.admission import Load

log = logging.getLogger("hosting")

# Runtimes whose dead replicas the monitor starts again: local processes, and Docker containers that the
# engine's restart policy leaves stopped (it restarts a crashed container, never one stopped or killed by
# hand, e.g. `docker kill`). Modal, Kubernetes and Swarm restart their own.
RESTARTED_BY_MONITOR = ("local", "docker")


def probe(address: str) -> tuple[bool, Load | None]:
    """Whether the replica answers SERVING, and its load."""
    with InferenceClient(address) as client:
        return client.health(timeout_s=1.0)


class Monitor:
    def __init__(
        self,
        journal: Journal,
        settings: HostingSettings,
        runtimes: dict[str, Runtime],
        replicas: dict[str, list[Replica]],
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.runtimes = runtimes
        self.replicas = replicas  # the deployer's: model id -> live replicas
        self.stopping = threading.Event()
        self.scaler = Scaler()

    def start(self) -> None:
        threading.Thread(target=self._run, name="deployment-monitor", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self) -> None:
        while not self.stopping.wait(self.settings.monitor_interval_s):
            for model_id in list(self.replicas):
                try:
                    self.check(model_id)
                except Exception:  # the monitor must keep watching the others
                    log.exception("health check failed", extra={"model_id": model_id})

    def check(self, model_id: str) -> None:
        lock = self.journal.lock(model_id)
        if not lock.acquire(blocking=False):
            return  # a rollout or delete holds it
        try:
            model = self.journal.store.get(model_id)
            replicas = self.replicas.get(model_id, [])
            if model is None or model.state not in ("healthy", "unhealthy") or not replicas:
                self.scaler.forget(model_id)
                return
            runtime = self.runtimes[model.runtime]
            health = []
            loads: dict[str, Load | None] = {}
            for i, replica in enumerate(replicas):
                if model.runtime in RESTARTED_BY_MONITOR and not runtime.alive(model, replica.replica_id):
                    why = runtime.why_down(model, replica.replica_id)
                    runtime.stop(model, replica.replica_id)  # a stopped container keeps its name until removed
                    port = int(replica.address.rsplit(":", 1)[1])
                    replicas[i] = replica = runtime.start(model, i, port)
                    exited = f"replica {i} exited" + (f" ({why})" if why else "")
                    self.journal.emit(model, log_line=f"{exited}; restarted it on {replica.address}")
                ok, loads[replica.address] = probe(replica.address)
                health.append(ok)
            if all(health) and model.state == "healthy" and not runtime.scales_itself:
                decision = self.scaler.decide(model, loads, time.monotonic(), self.settings)
                if decision.change:
                    self._scale(model, runtime, replicas, decision)
                    return
            model.endpoints = [
                Endpoint(r.address, r.replica_id[:12], ok) for r, ok in zip(replicas, health, strict=True)
            ]
            if all(health) and model.state == "unhealthy":
                self.journal.emit(model, "healthy", "every replica answers again")
            elif not all(health) and model.state == "healthy":
                down = []
                for replica, ok in zip(replicas, health, strict=True):
                    if not ok:
                        why = runtime.why_down(model, replica.replica_id)
                        down.append(replica.address + (f" ({why})" if why else ""))
                self.journal.emit(model, "unhealthy", f"replica(s) not answering: {', '.join(down)}")
        finally:
            lock.release()

    def _scale(self, model: HostedModel, runtime: Runtime, replicas: list[Replica], decision: Decision) -> None:
        """One replica more (started, then listed once ready) or fewer (unlisted, then stopped); lock held."""
        if decision.change > 0:
            replica = runtime.start(model, len(replicas), free_port())
            try:
                with InferenceClient(replica.address, model.name) as client:
                    client.wait_ready(self.settings.ready_timeout_s, partial(runtime.alive, model, replica.replica_id))
            except Exception as error:  # the model keeps serving on the replicas it has
                tail = runtime.logs(model, replica.replica_id)
                runtime.stop(model, replica.replica_id)
                self.journal.emit(
                    model, message=f"could not add a replica ({decision.reason}): {error}", log_line=tail[-2000:]
                )
                return
            replicas.append(replica)
            gone = None
        else:
            gone = replicas.pop()
        model.endpoints = [Endpoint(r.address, r.replica_id[:12], True) for r in replicas]
        self.journal.emit(model, message=f"scaled to {len(replicas)} replica(s): {decision.reason}")
        if gone is not None:  # unlisted first: new runs no longer get it; its server drains what it holds
            runtime.stop(model, gone.replica_id)
