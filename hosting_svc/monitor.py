"""The health monitor: every deployed replica's gRPC health, checked every `monitor_interval_s`.

A replica that stops answering turns its model UNHEALTHY (with what the
runtime knows: killed for memory, an exit code), its recovery turns it
HEALTHY again, and a local process that died is restarted (Docker's restart
policy does that for containers).
"""

from __future__ import annotations

import logging
import threading

from clients.inference import InferenceClient
from hosting_svc.domain import Endpoint
from hosting_svc.journal import Journal
from hosting_svc.runtimes import Replica, Runtime
from hosting_svc.settings import HostingSettings

log = logging.getLogger("hosting")


def serving(address: str) -> bool:
    with InferenceClient(address) as client:
        return client.serving(timeout_s=1.0)


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
                return
            runtime = self.runtimes[model.runtime]
            health = []
            for i, replica in enumerate(replicas):
                if not runtime.alive(model, replica.replica_id) and model.runtime == "local":
                    port = int(replica.address.rsplit(":", 1)[1])
                    replicas[i] = replica = runtime.start(model, i, port)
                    self.journal.emit(model, log_line=f"replica {i} exited; restarted it on {replica.address}")
                health.append(serving(replica.address))
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
