"""Docker Swarm: a deployment is one replicated Swarm service per model name and environment.

Swarm keeps the replica count, restarts a replica that exits or fails its health check, and rolls a new
version out task by task, rolling back on its own when a new task fails (`UpdateConfig(failure_action=
"rollback")`). So this runtime `scales_itself`: one start() per deployment creates, scales or updates the
service, like the kubernetes runtime. Hosting's load-based autoscaler does not act on it (Swarm has no
metric-based autoscaler; a deployment's count changes with DeployModel), and the monitor does not restart
its replicas (Swarm does).

Addresses. Swarm's ingress publishes ports on every interface, and host-mode publishing cannot name an
address either, while servers here bind 127.0.0.1 only. So the service's tasks join the host's network
(as the docker runtime's containers do) and each task's model server binds 127.0.0.1:BASE+SLOT, where SLOT
is the task's slot (Swarm's `{{.Task.Slot}}` template, 1..replicas, kept when a task is replaced) and BASE
is the first port of a block of BLOCK ports the service gets from CONSTELLATION_HOSTING_SWARM_PORTS. The
replicas' addresses, resolved from the service's tasks, are what callers get as endpoints. Sharing the
loopback means a slot's old and new task cannot both hold its port: updates are stop-first, one task at a
time, so the other replicas keep serving (one replica: a short gap).

Confinement matches the docker runtime: uid 10001, read-only root with a 64 MiB tmpfs /tmp, every
capability dropped, no_new_privs (set by `setpriv --no-new-privs` before the model server starts: Swarm's
API before 1.46 has no such option), at most 256 processes and threads, the open files, file size and
core ulimits, and the model's memory and CPUs as the service's resource limits.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import docker.types
from docker.errors import APIError, NotFound

from hosting_svc import images
from hosting_svc.domain import HostedModel
from hosting_svc.runtimes import DEFAULT_LIMITS, LogLine, ModelLimits, Replica, StateChange
from hosting_svc.runtimes.docker import LABEL_OWNER
from hosting_svc.runtimes.kubernetes import resource_name
from mesh.errors import FailedPrecondition

BLOCK = 32  # ports per service: slots 1..31 (DeployModel allows 16 replicas)
LABEL_PORT_BASE = "constellation.swarm.port_base"
LABEL_PROMOTED = "constellation.swarm.promoted"  # changed when a retired version's spec is forgotten
SECOND = 1_000_000_000  # Swarm's durations are in nanoseconds
UPDATE_MONITOR_S = 3  # how long Swarm watches each updated task before counting the update a success
POLL_S = 0.5
FAILED_STATES = ("failed", "rejected", "orphaned")
SERVE = (
    "export MODEL_PORT=$((PORT_BASE + MODEL_SLOT)); "
    "exec setpriv --no-new-privs python -m model_runtime --model-dir /opt/model --host 127.0.0.1 --port $MODEL_PORT"
)
HEALTHY = "MODEL_PORT=$((PORT_BASE + MODEL_SLOT)) exec python /opt/runtime/healthcheck.py"


def parse_ports(text: str) -> tuple[int, int]:
    """CONSTELLATION_HOSTING_SWARM_PORTS ("21000-21999") as (first, last)."""
    first, _, last = text.partition("-")
    return int(first), int(last)


def service_name(model: HostedModel, owner: str) -> str:
    """One service per model name and environment of one hosting (its home, hashed, keeps meshes apart)."""
    return f"constellation-{resource_name(model)}-{hashlib.sha256(owner.encode()).hexdigest()[:8]}"


class SwarmRuntime:
    name = "swarm"
    scales_itself = True  # one start per deployment: Swarm runs, restarts and rolls the replicas

    def __init__(
        self,
        engine: images.Engine,
        owner: str,
        ports: tuple[int, int],
        rollout_timeout_s: float,
        limits: ModelLimits = DEFAULT_LIMITS,
    ) -> None:
        self.api = engine.client.api
        self.owner = owner
        self.ports = ports
        self.rollout_timeout_s = rollout_timeout_s
        self.limits = limits
        self.allocating = threading.Lock()

    @staticmethod
    def is_manager(engine: images.Engine) -> bool:
        """Whether the engine is a Swarm manager (`docker swarm init` was run), so services can be made."""
        return bool(engine.client.info().get("Swarm", {}).get("ControlAvailable"))

    # The Runtime interface.

    def build(self, model: HostedModel, wheelhouse: Path, change: StateChange, log: LogLine) -> str:
        raise FailedPrecondition("Swarm deploys packaged images; package with Docker first")

    def prepare(self, model: HostedModel, log: LogLine) -> None:
        if not model.image:
            raise FailedPrecondition(f"{model.name}:{model.version} has no image; package it with Docker first")

    def start(self, model: HostedModel, index: int, port: int) -> Replica:
        """Create the service, or scale it (same version) or roll it to this version; wait until every replica
        runs this version. Raises RuntimeError when Swarm rolled the new version back, or on timeout (then this
        version's spec is gone: the previous one is put back, or the service removed)."""
        name = service_name(model, self.owner)
        current = self._inspect(name)
        if current is None:
            with self.allocating:  # two deployments at once must not take the same block
                base = self._free_block()
                self.api.create_service(name=name, **self._spec(model, base))
        else:
            base = int(current["Spec"]["Labels"][LABEL_PORT_BASE])
            self.api.update_service(current["ID"], current["Version"]["Index"], name=name, **self._spec(model, base))
        try:
            self._wait_converged(model, name)
        except RuntimeError:  # nothing of this version is left serving: the Deployer holds no replica to stop
            self.stop(model, "")
            raise
        return self.resolve(model, Replica(name, ""))[0]

    def resolve(self, model: HostedModel, replica: Replica) -> list[Replica]:
        """The service's replicas: one per slot with a task meant to run, at 127.0.0.1:BASE+SLOT."""
        service = self._inspect(replica.replica_id.partition("@")[2] or replica.replica_id)
        if service is None:
            return []
        base = int(service["Spec"]["Labels"][LABEL_PORT_BASE])
        slots = sorted({t["Slot"] for t in self._tasks(service["ID"])})
        return [Replica(f"{slot}@{service['ID']}", f"127.0.0.1:{base + slot}") for slot in slots]

    def start_trial(self, model: HostedModel, port: int) -> Replica:
        raise FailedPrecondition("smoke tests run on Docker or the local runtime, not on Swarm")

    def alive(self, model: HostedModel, replica_id: str) -> bool:
        """The service still runs this version (Swarm restarts a replica that exits; a rollback hands it back)."""
        service = self._inspect(self._service_of(model, replica_id))
        return service is not None and service["Spec"]["Labels"].get(images.LABEL_MODEL) == model.id

    def why_down(self, model: HostedModel, replica_id: str) -> str:
        """The latest error of the replica's slot (an exit code, a failed health check), or the rollback's."""
        service = self._inspect(self._service_of(model, replica_id))
        if service is None:
            return "the Swarm service is gone"
        slot = replica_id.partition("@")[0]
        tasks = [t for t in self._tasks(service["ID"], everything=True) if str(t.get("Slot")) == slot]
        for task in sorted(tasks, key=lambda t: t["UpdatedAt"], reverse=True):
            status = task.get("Status", {})
            if status.get("Err"):
                return status["Err"]
        return (service.get("UpdateStatus") or {}).get("Message", "")

    def stop(self, model: HostedModel, replica_id: str) -> None:
        """Stopping a retired version forgets its spec; stopping the serving version rolls back to the version it
        replaced when that one is kept, or removes the service."""
        service = self._inspect(self._service_of(model, replica_id))
        if service is None:
            return
        labels = service["Spec"].get("Labels") or {}
        previous = service.get("PreviousSpec") or {}
        before = (previous.get("Labels") or {}).get(images.LABEL_MODEL)
        if labels.get(images.LABEL_MODEL) != model.id:
            if before == model.id:  # retired: a later stop of the serving version must not roll back to it
                spec = dict(service["Spec"])
                spec["Labels"] = {**labels, LABEL_PROMOTED: str(time.time_ns())}
                self._put(service, spec)
            return
        if before and before != model.id and previous.get("TaskTemplate"):
            self._put(service, previous)
            return
        try:
            self.api.remove_service(service["ID"])
        except NotFound:
            pass

    def logs(self, model: HostedModel, replica_id: str) -> str:
        service = self._service_of(model, replica_id)
        try:
            return b"".join(self.api.service_logs(service, stdout=True, stderr=True, tail=30)).decode(errors="replace")
        except (NotFound, APIError):
            return ""

    def running(self) -> dict[str, list[str]]:
        """model id -> replica ids, for the serving version of each of this hosting's services (and the version it
        replaced, so retiring that one finds the service)."""
        found: dict[str, list[str]] = {}
        for service in self.api.services(filters={"label": f"{LABEL_OWNER}={self.owner}"}):
            labels = service["Spec"]["Labels"]
            replicas = self.resolve(HostedModel(id="", name="", version=""), Replica(service["ID"], ""))
            found.setdefault(labels[images.LABEL_MODEL], []).extend(r.replica_id for r in replicas)
            if not replicas:
                found[labels[images.LABEL_MODEL]].append(f"0@{service['ID']}")
            before = ((service.get("PreviousSpec") or {}).get("Labels") or {}).get(images.LABEL_MODEL)
            if before and before != labels[images.LABEL_MODEL]:
                found.setdefault(before, []).append(f"previous@{service['ID']}")
        return found

    def discard_trials(self, model_id: str = "") -> None:
        """Swarm runs no smoke tests."""

    def remove(self, model: HostedModel) -> None:
        """The service, if this version serves on it (the docker runtime removes the image)."""
        self.stop(model, "")

    # The service.

    def _service_of(self, model: HostedModel, replica_id: str) -> str:
        return replica_id.partition("@")[2] or service_name(model, self.owner)

    def _inspect(self, service: str) -> dict | None:
        try:
            return self.api.inspect_service(service)
        except NotFound:
            return None

    def _tasks(self, service_id: str, everything: bool = False) -> list[dict]:
        filters: dict[str, Any] = {"service": service_id}
        if not everything:
            filters["desired-state"] = "running"
        return self.api.tasks(filters=filters)

    def _spec(self, model: HostedModel, base: int) -> dict[str, Any]:
        labels = {
            images.LABEL_MODEL: model.id,
            images.LABEL_NAME: model.name,
            images.LABEL_VERSION: model.version,
            images.LABEL_ROLE: "swarm",
            "constellation.environment": model.environment,
            LABEL_OWNER: self.owner,
        }
        container = docker.types.ContainerSpec(
            image=model.image,
            command=["sh", "-c", SERVE],
            env={"PORT_BASE": str(base), "MODEL_SLOT": "{{.Task.Slot}}"},
            user="10001",
            labels=labels,
            read_only=True,
            cap_drop=["ALL"],
            mounts=[docker.types.Mount("/tmp", "", type="tmpfs", tmpfs_size=images.TMP_BYTES)],
            healthcheck=docker.types.Healthcheck(
                test=["CMD-SHELL", HEALTHY],
                # Swarm kills a task that turns unhealthy: a replica busy on its CPU limit must not be, when the
                # check's own Python takes seconds to start beside it.
                interval=2 * SECOND,
                timeout=10 * SECOND,
                retries=5,
                start_period=30 * SECOND,
            ),
            stop_grace_period=10 * SECOND,
        )
        container["Ulimits"] = [  # API 1.41; docker-py has no argument for it
            {"Name": "nofile", "Soft": self.limits.open_files, "Hard": self.limits.open_files},
            {"Name": "fsize", "Soft": images.TMP_BYTES, "Hard": images.TMP_BYTES},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ]
        cpus = float(model.manifest.get("resources", {}).get("cpu") or 0)
        resources = docker.types.Resources(
            cpu_limit=int(cpus * SECOND) or None, mem_limit=self.limits.memory_bytes(model)
        )
        resources["Limits"]["Pids"] = images.PIDS_LIMIT  # API 1.41; docker-py has no argument for it
        task = docker.types.TaskTemplate(
            container,
            resources=resources,
            restart_policy=docker.types.RestartPolicy(condition="any", delay=SECOND),
            networks=["host"],
        )
        return {
            "task_template": task,
            "labels": {**labels, LABEL_PORT_BASE: str(base)},
            "mode": docker.types.ServiceMode("replicated", replicas=max(model.replicas, 1)),
            "update_config": docker.types.UpdateConfig(
                parallelism=1,
                failure_action="rollback",
                monitor=UPDATE_MONITOR_S * SECOND,
                max_failure_ratio=0,
                order="stop-first",
            ),
            # A rollback goes on when a task of the previous version fails: the restart policy brings it back.
            "rollback_config": docker.types.RollbackConfig(
                parallelism=0, failure_action="continue", monitor=UPDATE_MONITOR_S * SECOND, order="stop-first"
            ),
        }

    def _put(self, service: dict, spec: dict) -> None:
        """Replace the service's spec with `spec` (a Spec or PreviousSpec as Swarm returns it)."""
        self.api.update_service(
            service["ID"],
            service["Version"]["Index"],
            task_template=spec["TaskTemplate"],
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=spec.get("Mode"),
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )

    def _free_block(self) -> int:
        """The first block of the port range that no service of the engine holds and whose ports are free."""
        taken = {
            int(s["Spec"]["Labels"][LABEL_PORT_BASE]) for s in self.api.services(filters={"label": LABEL_PORT_BASE})
        }
        first, last = self.ports
        for base in range(first, last - BLOCK + 2, BLOCK):
            if base not in taken and all(_free(port) for port in range(base + 1, base + BLOCK)):
                return base
        raise FailedPrecondition(
            f"no free block of {BLOCK} ports left in CONSTELLATION_HOSTING_SWARM_PORTS={first}-{last}; widen it"
        )

    def _wait_converged(self, model: HostedModel, name: str) -> None:
        """Until every replica runs the service's current spec; raises once Swarm has rolled this version back and
        the previous one runs again, when an update paused, or when time ran out."""
        deadline = time.monotonic() + self.rollout_timeout_s
        while True:
            service = self._inspect(name)
            if service is None:
                raise RuntimeError("the Swarm service was removed during the rollout")
            update = service.get("UpdateStatus") or {}
            state = update.get("State", "")
            rolled_back = service["Spec"]["Labels"].get(images.LABEL_MODEL) != model.id
            if state in ("paused", "rollback_paused"):
                raise RuntimeError(
                    f"Swarm paused the {state.replace('_paused', '') or 'update'}: {update.get('Message')}"
                )
            running, wanted = self._running(service)
            settled = running == wanted and state not in ("updating", "rollback_started")
            if rolled_back and (settled or time.monotonic() > deadline):
                raise RuntimeError(
                    f"Swarm rolled the service back: {update.get('Message') or 'a new replica failed'}"
                    + _last_error(self._tasks(service["ID"], everything=True), model.image)
                )
            if settled:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{running} of {wanted} replica(s) running after {self.rollout_timeout_s:.0f} s"
                    + _last_error(self._tasks(service["ID"], everything=True), model.image)
                )
            time.sleep(POLL_S)

    def _running(self, service: dict) -> tuple[int, int]:
        """(replicas running the service's current image, replicas wanted); a task of another image counts as
        not running."""
        image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        tasks = self._tasks(service["ID"])
        running = [
            t for t in tasks if t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == image
        ]
        wanted = service["Spec"]["Mode"]["Replicated"]["Replicas"]
        return (len(running) if len(tasks) == wanted else min(len(running), wanted - 1)), wanted


def _last_error(tasks: list[dict], image: str) -> str:
    """What the latest failed task of `image` says: its error, state and exit code."""
    for task in sorted(tasks, key=lambda t: t["UpdatedAt"], reverse=True):
        status = task.get("Status", {})
        if task["Spec"]["ContainerSpec"]["Image"].startswith(image) and status.get("State") in FAILED_STATES:
            code = (status.get("ContainerStatus") or {}).get("ExitCode")
            said = status.get("Err") or status.get("Message", "")
            return f" (last failed replica: {status['State']}: {said}" + (f", exit code {code})" if code else ")")
    return ""


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
