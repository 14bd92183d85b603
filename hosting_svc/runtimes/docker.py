"""Replicas as hardened containers on the host network, each bound to 127.0.0.1:port; or, with
CONSTELLATION_HOSTING_DOCKER_NETWORK (compose), on that Docker network, each reached there as
<container name>.models:port.

Images are built here too: the model folder and its wheelhouse become a build
context (packaging.py, pure) that the engine builds with the network off. The
smoke test, the first time the model's code runs, has no network either: its
container's network is `none`, and hosting reaches the model server through an
`images.ExecForwarder` (a host port, one `docker exec` per connection).

Every container is non-root (uid 10001), read-only but a 64 MiB /tmp, with all
capabilities dropped, no-new-privileges, at most 256 processes and threads, and
the model's memory (resources.memory, or CONSTELLATION_HOSTING_MODEL_MEMORY);
smoke tests also have a CPU time limit.
"""

from __future__ import annotations

import hashlib
import logging
import signal
from pathlib import Path

from hosting_svc import images, packaging
from hosting_svc.domain import HostedModel
from hosting_svc.runtimes import DEFAULT_LIMITS, LogLine, ModelLimits, Replica, StateChange, limit_reached

log = logging.getLogger("hosting")

LABEL_OWNER = "constellation.owner"
SMOKE_PORT = 8001  # inside the smoke test's container, on its own loopback (it has no network)


class DockerRuntime:
    name = "docker"
    scales_itself = False

    def __init__(
        self,
        engine: images.Engine,
        owner: str = "",
        base_image: str = "",
        builds: Path | None = None,
        limits: ModelLimits = DEFAULT_LIMITS,
        network: str = "",
    ) -> None:
        self.engine = engine
        self.network = network  # "" : the host's network
        self.limits = limits
        self.forwarders: dict[str, images.ExecForwarder] = {}  # smoke test container id -> its forwarder
        # Which hosting's replicas these are (its home folder), so meshes sharing an engine keep apart
        # and `constellation down` removes only its own.
        self.owner = owner
        self.base_image = base_image
        self.builds = builds or Path(owner or ".") / "builds"

    def build(self, model: HostedModel, wheelhouse: Path, change: StateChange, log_line: LogLine) -> str:
        self.engine.require_image(self.base_image)
        change("building", f"building on {self.base_image} with the network off")
        labels = self._image_labels(model)
        context = packaging.prepare_context(
            Path(model.manifest["folder"]), wheelhouse, self.builds / model.id, self.base_image, labels
        )
        tag = f"constellation/{model.name}:{model.version}"
        self.engine.build(context, tag, labels, log_line)
        model.image, model.image_digest = tag, self.engine.image_digest(tag)
        installed = self.engine.read_file(tag, "/opt/installed-packages.txt").split()
        model.installed_packages = [p for p in installed if "==" in p]
        return f"built {tag} ({self.engine.image_size(tag) / 1e6:.0f} MB); smoke-testing it"

    @staticmethod
    def _image_labels(model: HostedModel) -> dict[str, str]:
        return {
            images.LABEL_MODEL: model.id,
            images.LABEL_NAME: model.name,
            images.LABEL_VERSION: model.version,
            images.LABEL_MANIFEST: model.manifest["digest"],
        }

    def prepare(self, model: HostedModel, log: LogLine) -> None:
        """The image was built and validated by PackageModel."""

    def start(self, model: HostedModel, index: int, port: int) -> Replica:
        labels = {
            images.LABEL_MODEL: model.id,
            images.LABEL_NAME: model.name,
            images.LABEL_VERSION: model.version,
            images.LABEL_ROLE: "replica",
            "constellation.environment": model.environment,
            LABEL_OWNER: self.owner,
        }
        name = f"constellation-{model.name}-{model.version}-{model.environment}-{index}".replace("+", "-")
        if self.owner:
            name += "-" + hashlib.sha256(self.owner.encode()).hexdigest()[:8]
        for stale in self.engine.containers(**{"constellation.replica_name": name}):
            self.engine.remove_container(stale.id)
        labels["constellation.replica_name"] = name
        container_id = self.engine.run(
            model.image, name, port, labels, self._limits(model), restart=True, network=self.network
        )
        # On a Docker network the engine's DNS resolves the container's alias for the members of that network.
        return Replica(container_id, f"{images.network_alias(name) if self.network else '127.0.0.1'}:{port}")

    def _limits(self, model: HostedModel, cpu_s: int = 0) -> images.ContainerLimits:
        cpus = float(model.manifest.get("resources", {}).get("cpu") or 0)
        return images.ContainerLimits(self.limits.memory_bytes(model), self.limits.open_files, cpus, cpu_s)

    def resolve(self, model: HostedModel, replica: Replica) -> list[Replica]:
        return [replica]

    def start_trial(self, model: HostedModel, port: int) -> Replica:
        """Without a network, reached through a forwarder on a free host port (`port` is not used)."""
        labels = {**self._image_labels(model), images.LABEL_ROLE: "smoke", LABEL_OWNER: self.owner}
        limits = self._limits(model, cpu_s=self.limits.smoke_cpu_s)
        name = f"constellation-smoke-{model.id}"
        container_id = self.engine.run(model.image, name, SMOKE_PORT, labels, limits, restart=False, host_network=False)
        forwarder = self.forwarders[container_id] = self.engine.forward(container_id, SMOKE_PORT)
        return Replica(container_id, f"127.0.0.1:{forwarder.port}")

    def alive(self, model: HostedModel, replica_id: str) -> bool:
        return self.engine.starting_or_running(replica_id)

    def stop(self, model: HostedModel, replica_id: str) -> None:
        if forwarder := self.forwarders.pop(replica_id, None):
            forwarder.close()
        self.engine.remove_container(replica_id)

    def why_down(self, model: HostedModel, replica_id: str) -> str:
        """Why a replica does not answer: killed for memory, a limit its log shows, or its exit code."""
        state = self.engine.container_state(replica_id)
        if state.get("OOMKilled"):
            return f"killed for running out of memory (limit {self.limits.memory_for(model)}; raise resources.memory)"
        reached = limit_reached(self.engine.logs(replica_id), self.limits.memory_for(model), images.PIDS_LIMIT)
        if reached:
            return reached
        if state.get("ExitCode") == 128 + signal.SIGXCPU:
            return "killed at its CPU time limit"
        if state.get("ExitCode"):
            return f"last exited with code {state['ExitCode']}"
        return ""

    def logs(self, model: HostedModel, replica_id: str) -> str:
        return self.engine.logs(replica_id)

    def running(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for container in self.engine.containers(**{images.LABEL_ROLE: "replica", LABEL_OWNER: self.owner}):
            found.setdefault(container.labels[images.LABEL_MODEL], []).append(container.id)
        return found

    def discard_trials(self, model_id: str = "") -> None:
        wanted = {
            images.LABEL_ROLE: "smoke",
            LABEL_OWNER: self.owner,
            **({images.LABEL_MODEL: model_id} if model_id else {}),
        }
        for container in self.engine.containers(**wanted):
            if forwarder := self.forwarders.pop(container.id, None):
                forwarder.close()
            self.engine.remove_container(container.id)

    def remove(self, model: HostedModel) -> None:
        """Every container of the model, then its image unless another container still uses it."""
        for container in self.engine.containers(**{images.LABEL_MODEL: model.id}):
            self.engine.remove_container(container.id)
        if model.image and not self.engine.remove_image(model.image):
            log.info("image kept: in use", extra={"image": model.image})
