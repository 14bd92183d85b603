"""After a restart: nothing stays in progress, serving replicas are adopted, orphans removed.

Replicas outlive hosting on purpose (containers with a restart policy, local
processes in their own session), so a restarted hosting finds them through
its runtimes (labels, pid files) and takes them back; a model caught mid-build
or mid-rollout is FAILED with the reason, and its leftovers are removed.
"""

from __future__ import annotations

import logging

from hosting_svc.domain import HostedModel
from hosting_svc.journal import Journal
from hosting_svc.runtimes import Replica, Runtime

log = logging.getLogger("hosting")


def reconcile(journal: Journal, runtimes: dict[str, Runtime], replicas: dict[str, list[Replica]]) -> None:
    """Bring the store and the runtimes into agreement; fills `replicas` (model id -> live) with what it adopts."""
    known = {m.id: m for m in journal.store.all()}
    held = {name: runtime.running() for name, runtime in runtimes.items()}
    for model in known.values():
        if model.state in ("packaging", "building", "validating"):
            for runtime in runtimes.values():
                runtime.discard_trials(model.id)
            journal.emit(model, "failed", f"hosting restarted while {model.state}; package the model again")
            continue
        replica_ids = held.get(model.runtime, {}).get(model.id, [])
        if model.state in ("healthy", "unhealthy", "deploying") and replica_ids:
            by_id = {e.replica_id: e.address for e in model.endpoints}
            found = [Replica(rid, by_id.get(rid[:12], "")) for rid in replica_ids]
            if model.state == "deploying" or not all(r.address for r in found):
                for replica in found:
                    runtimes[model.runtime].stop(model, replica.replica_id)
                model.endpoints = []
                journal.emit(model, "failed", "hosting restarted during the rollout; deploy again")
                continue
            replicas[model.id] = found
            journal.emit(model, message=f"adopted {len(found)} running replica(s) after a hosting restart")
        elif model.state in ("healthy", "unhealthy", "deploying", "pushing"):
            model.endpoints = []
            journal.emit(
                model, "failed", f"hosting restarted while {model.state} and no replica is running; deploy again"
            )
    for name, running in held.items():
        for model_id, replica_ids in running.items():
            owner = known.get(model_id)
            if owner is None or model_id not in replicas:
                for replica_id in replica_ids:
                    runtimes[name].stop(owner or HostedModel(id=model_id, name="", version=""), replica_id)
                log.info("removed orphan replicas", extra={"model_id": model_id, "count": len(replica_ids)})
    for runtime in runtimes.values():
        runtime.discard_trials()
