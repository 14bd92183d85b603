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

Several hosting instances may share one database and engine: each deployment
is watched by the one instance holding its lease (`deployment:<model id>`,
mesh.leases), taken by the instance that rolls it out. Every
`lease_renew_s` the monitor renews its leases and takes those that expired
(their instance died), adopting the deployment's running replicas from the
runtime; each instance holds `hosting-instance:<holder>` while it lives, so a
starting instance knows whether others run (then it leaves their work alone
rather than reconcile it).

Fencing: an instance paused past its lease's expiry (a long GC pause, SIGSTOP) wakes up believing it still
watches deployments another instance took meanwhile. So every write the monitor makes for a deployment is
conditional on its lease at the generation it took: a deployment event and the model's state are written in
one transaction that first checks the lease (mesh.leases.Leases.check; on PostgreSQL the row stays locked
until the write commits, so a steal waits for it). The engine cannot join that transaction, so restarting a
replica and scaling renew the lease immediately before (which also proves it is still held at that
generation): a successor cannot take it for a whole TTL after that, and the engine call follows within
milliseconds, so only a pause longer than the TTL in that very gap could slip through. A refused write or
renewal makes the instance drop the deployment (its replicas are no longer its to watch) and log it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from functools import partial

from sqlalchemy.exc import SQLAlchemyError

from clients.inference import InferenceClient
from hosting_svc.domain import IN_PROGRESS, Endpoint, HostedModel
from hosting_svc.journal import Journal, now
from hosting_svc.runtimes import Replica, Runtime, free_port
from hosting_svc.scaling import Decision, Scaler
from hosting_svc.settings import HostingSettings
from hosting_svc.store import Fence
from mesh.errors import FailedPrecondition
from mesh.leases import Lease, LeaseLost, Leases
from model_runtime.admission import Load

log = logging.getLogger("hosting")

# Runtimes whose dead replicas the monitor starts again: local processes, and Docker containers that the
# engine's restart policy leaves stopped (it restarts a crashed container, never one stopped or killed by
# hand, e.g. `docker kill`). Modal, Kubernetes and Swarm restart their own.
RESTARTED_BY_MONITOR = ("local", "docker")
LEASE = "deployment:"  # + model id: which instance watches the deployment
INSTANCE = "hosting-instance:"  # + holder: held while that instance runs
WATCHED = ("deploying", "healthy", "unhealthy")  # states whose deployment has a watcher
WORK = "hosting-work:"  # + model id: held by the instance packaging it or rolling it out (IN_PROGRESS)
AGAIN = {"pushing": "deploy it again", "deploying": "deploy it again"}  # else: package the model again


def _dead_here(holder: str) -> bool:
    """Whether a lease holder ("host-pid-random", mesh.leases.holder_id) was a process of this host that is gone."""
    parts = holder.rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname()[:64] or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
        leases: Leases,
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.runtimes = runtimes
        self.replicas = replicas  # the deployer's: model id -> live replicas
        self.leases = leases
        self.held: dict[str, Lease] = {}  # model id -> this instance's lease on watching its deployment
        self.working: dict[str, Lease] = {}  # model id -> this instance's lease on packaging or rolling it out
        self._held_lock = threading.Lock()
        self.instance: Lease | None = None  # held from join() on
        self.stopping = threading.Event()
        self.scaler = Scaler()

    # Leases

    def join(self) -> bool:
        """Takes this instance's lease; whether other instances were running (then their work in progress is
        theirs: this one does not reconcile). An instance of this host whose process is gone (killed, restarted
        at once) does not count, though its lease has not expired yet: its leases are ended here, so that its
        deployments and work in progress are this instance's to reconcile and take at once."""
        others = [name.removeprefix(INSTANCE) for name in self.leases.held(INSTANCE)]
        others = [holder for holder in others if holder != self.leases.holder]
        self.instance = self.leases.acquire(INSTANCE + self.leases.holder)
        for holder in others:
            if _dead_here(holder):  # its deployments and work in progress are free at once (a restart)
                self.leases.expire_held_by(holder)
        return any(not _dead_here(holder) for holder in others)

    def claim(self, model_id: str) -> bool:
        """The lease on watching the model's deployment, for this instance: False while another instance's."""
        with self._held_lock:
            if model_id in self.held:
                return True
            lease = self.leases.acquire(LEASE + model_id)
            if lease is not None:
                self.held[model_id] = lease
            return lease is not None

    def holder_of(self, model_id: str) -> str:
        return self.leases.holder_of(LEASE + model_id)

    def fence(self, model_id: str) -> Fence:
        """The check a write for the deployment runs in its own transaction: this instance's lease, at the
        generation it took, still held (LeaseLost otherwise)."""
        lease = self.held.get(model_id)

        def check(session) -> None:
            if lease is None:
                raise LeaseLost(f"this hosting instance does not watch the deployment of {model_id}")
            self.leases.check(session, lease)

        return check

    def _still_held(self, model_id: str) -> bool:
        """Before an engine call for the deployment (which no transaction can fence): renew its lease, which
        proves it is still this instance's at its generation and keeps it so for a TTL; drop it if lost."""
        lease = self.held.get(model_id)
        if lease is not None and self.leases.renew(lease):
            return True
        self._lose(model_id)
        return False

    def _lose(self, model_id: str) -> None:
        """The deployment's lease is gone (this instance was paused past its expiry, and another took it): stop
        watching it, touching nothing."""
        with self._held_lock:
            self.held.pop(model_id, None)
            self.replicas.pop(model_id, None)
        self.scaler.forget(model_id)
        log.warning(
            "lost the lease on a deployment (another hosting instance watches it now); this one stops acting on it",
            extra={"model_id": model_id},
        )

    def begin_work(self, model_id: str) -> None:
        """Before the model's state becomes one of IN_PROGRESS (Journal.emit): the lease on that work, held
        while this instance does it, so that another instance fails it if this one dies (abandoned())."""
        with self._held_lock:
            if model_id in self.working:
                return
            lease = self.leases.acquire(WORK + model_id)
            if lease is None:
                raise FailedPrecondition(
                    f"hosting instance {self.leases.holder_of(WORK + model_id)} is packaging or rolling out model "
                    f"{model_id}; watch it or wait"
                )
            self.working[model_id] = lease

    def end_work(self, model_id: str) -> None:
        """After the model's state left IN_PROGRESS (ready, failed, healthy...)."""
        with self._held_lock:
            lease = self.working.pop(model_id, None)
        if lease is not None:
            self.leases.release(lease)

    def abandoned(self, models: Iterable[HostedModel]) -> list[str]:
        """Of `models` (the store's, as _keep_leases read them), those left packaging or rolling out by an
        instance that died (its work lease expired, and nothing written for two lease periods): each is FAILED
        with the reason, its smoke-test and rollout replicas removed, by the one instance that takes the lease
        (which reads it again first). Returns their ids."""
        failed = []
        stale_before = now() - timedelta(seconds=2 * self.leases.ttl.total_seconds())
        for model in models:
            recent = model.last_updated is not None and model.last_updated > stale_before
            if model.state not in IN_PROGRESS or model.id in self.working or recent:
                continue
            if self.leases.holder_of(WORK + model.id):
                continue  # its instance is at work on it
            try:
                self.begin_work(model.id)
            except FailedPrecondition:
                continue  # another instance took it first
            with self.journal.lock(model.id):
                current = self.journal.store.get(model.id)
                if current is None or current.state not in IN_PROGRESS:
                    self.end_work(model.id)
                    continue
                runtime = self.runtimes.get(current.runtime)
                if runtime is not None:
                    runtime.discard_trials(current.id)
                    if current.state == "deploying":
                        for replica_id in runtime.running().get(current.id, []):
                            runtime.stop(current, replica_id)
                current.endpoints = []
                self.journal.emit(
                    current,
                    "failed",
                    f"the hosting instance it was {current.state} on stopped; "
                    + AGAIN.get(current.state, "package the model again"),
                )
            failed.append(model.id)
        if failed:
            log.warning("failed models another hosting instance left in progress", extra={"model_ids": failed})
        return failed

    def _keep_leases(self) -> None:
        """Renew this instance's leases, give up those of models no longer deployed, take the expired ones,
        fail the work dead instances left in progress."""
        if self.instance is None or not self.leases.renew(self.instance):
            self.instance = self.leases.acquire(INSTANCE + self.leases.holder)
        with self._held_lock:
            working = dict(self.working)
        for model_id, lease in working.items():
            if self.leases.renew(lease):
                continue
            again = self.leases.acquire(WORK + model_id)  # expired (a stall) but not taken: still this one's
            with self._held_lock:
                if again is not None:
                    self.working[model_id] = again
                    continue
                self.working.pop(model_id, None)
            log.warning("lost the lease on packaging or rolling out a model", extra={"model_id": model_id})
        models = self.journal.store.all()
        self.abandoned(models)
        watched = {m.id: m for m in models if m.state in WATCHED}  # a model failed just now is left as deploying
        with self._held_lock:
            for model_id, lease in list(self.held.items()):
                if model_id not in watched:
                    del self.held[model_id]
                    self.leases.release(lease)
                elif not self.leases.renew(lease):
                    del self.held[model_id]
                    self.replicas.pop(model_id, None)
                    log.warning("another hosting instance watches the deployment now", extra={"model_id": model_id})
        for model in watched.values():
            if model.state != "deploying" and model.id not in self.held and self.claim(model.id):
                self._adopt(model)

    def _adopt(self, model: HostedModel) -> None:
        """Watch a deployment whose instance stopped renewing its lease: its replicas are the runtime's."""
        if model.id in self.replicas or model.runtime not in self.runtimes:
            return
        by_id = {e.replica_id: e.address for e in model.endpoints}
        running = self.runtimes[model.runtime].running().get(model.id, [])
        found = [Replica(rid, by_id[rid[:12]]) for rid in running if rid[:12] in by_id]
        self.replicas[model.id] = found
        try:
            self.journal.emit(
                model,
                message=f"hosting instance {self.leases.holder} watches the deployment now ({len(found)} replica(s)): "
                "the instance that watched it stopped renewing its lease",
                fence=self.fence(model.id),
            )
        except LeaseLost:
            self._lose(model.id)

    def release_all(self) -> None:
        """This instance stops: others take its deployments at once."""
        with self._held_lock:
            leases, self.held = [*self.held.values(), *self.working.values()], {}
            self.working = {}
        for lease in [*leases, *([self.instance] if self.instance else [])]:
            self.leases.release(lease)

    def start(self) -> None:
        threading.Thread(target=self._run, name="deployment-monitor", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.release_all()
        except SQLAlchemyError:
            log.warning("could not release deployment leases; they expire", exc_info=True)

    def _run(self) -> None:
        next_keep = 0.0
        while not self.stopping.wait(self.settings.monitor_interval_s):
            if time.monotonic() >= next_keep:
                next_keep = time.monotonic() + self.settings.lease_renew_s
                try:
                    self._keep_leases()
                except SQLAlchemyError:  # the database is away: the leases expire if it stays away
                    log.warning("could not renew deployment leases", exc_info=True)
            for model_id in list(self.held):
                if model_id not in self.replicas:
                    continue
                try:
                    self.check(model_id)
                except Exception:  # the monitor must keep watching the others
                    log.exception("health check failed", extra={"model_id": model_id})

    def check(self, model_id: str) -> None:
        lock = self.journal.lock(model_id)
        if not lock.acquire(blocking=False):
            return  # a rollout or delete holds it
        try:
            self._check(model_id)
        except LeaseLost:
            self._lose(model_id)
        finally:
            lock.release()

    def _check(self, model_id: str) -> None:
        """One health round of the deployment (its lock held); every write fenced by its lease."""
        fence = self.fence(model_id)
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
                if not self._still_held(model_id):
                    return
                why = runtime.why_down(model, replica.replica_id)
                runtime.stop(model, replica.replica_id)  # a stopped container keeps its name until removed
                port = int(replica.address.rsplit(":", 1)[1])
                replicas[i] = replica = runtime.start(model, i, port)
                exited = f"replica {i} exited" + (f" ({why})" if why else "")
                self.journal.emit(model, log_line=f"{exited}; restarted it on {replica.address}", fence=fence)
            ok, loads[replica.address] = probe(replica.address)
            health.append(ok)
        if all(health) and model.state == "healthy" and not runtime.scales_itself:
            decision = self.scaler.decide(model, loads, time.monotonic(), self.settings)
            if decision.change:
                self._scale(model, runtime, replicas, decision, fence)
                return
        model.endpoints = [Endpoint(r.address, r.replica_id[:12], ok) for r, ok in zip(replicas, health, strict=True)]
        if all(health) and model.state == "unhealthy":
            self.journal.emit(model, "healthy", "every replica answers again", fence=fence)
        elif not all(health) and model.state == "healthy":
            down = []
            for replica, ok in zip(replicas, health, strict=True):
                if not ok:
                    why = runtime.why_down(model, replica.replica_id)
                    down.append(replica.address + (f" ({why})" if why else ""))
            self.journal.emit(model, "unhealthy", f"replica(s) not answering: {', '.join(down)}", fence=fence)

    def _scale(
        self, model: HostedModel, runtime: Runtime, replicas: list[Replica], decision: Decision, fence: Fence
    ) -> None:
        """One replica more (started, then listed once ready) or fewer (unlisted, then stopped); lock held."""
        if not self._still_held(model.id):
            return
        if decision.change > 0:
            replica = runtime.start(model, len(replicas), free_port())
            try:
                with InferenceClient(replica.address, model.name) as client:
                    client.wait_ready(self.settings.ready_timeout_s, partial(runtime.alive, model, replica.replica_id))
            except Exception as error:  # the model keeps serving on the replicas it has
                tail = runtime.logs(model, replica.replica_id)
                runtime.stop(model, replica.replica_id)
                self.journal.emit(
                    model,
                    message=f"could not add a replica ({decision.reason}): {error}",
                    log_line=tail[-2000:],
                    fence=fence,
                )
                return
            replicas.append(replica)
            gone = None
        else:
            gone = replicas.pop()
        model.endpoints = [Endpoint(r.address, r.replica_id[:12], True) for r in replicas]
        try:
            self.journal.emit(model, message=f"scaled to {len(replicas)} replica(s): {decision.reason}", fence=fence)
        except LeaseLost:  # the successor adopts what the engine runs; this instance only undoes its own start
            if gone is None:
                runtime.stop(model, replicas[-1].replica_id)
            raise
        if gone is not None:  # unlisted first: new runs no longer get it; its server drains what it holds
            runtime.stop(model, gone.replica_id)
