"""Replicas as hardened containers on the host network, each bound to 127.0.0.1:port."""

from __future__ import annotations

import hashlib

from hosting_svc import images
from hosting_svc.domain import HostedModel
from hosting_svc.runtimes import Replica


LABEL_OWNER = "constellation.owner"


class DockerRuntime:
    name = "docker"

    def __init__(self, engine: images.Engine, owner: str = "") -> None:
        self.engine = engine
        # Which hosting's replicas these are (its home folder), so meshes sharing an engine keep apart
        # and `constellation down` removes only its own.
        self.owner = owner

    def prepare(self, model: HostedModel, log) -> None:  # type: ignore[no-untyped-def]
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
            stale.remove(force=True)
        labels["constellation.replica_name"] = name
        container_id = self.engine.run(model.image, name, port, labels, model.manifest.get("resources", {}), restart=True)
        return Replica(container_id, f"127.0.0.1:{port}")

    def alive(self, model: HostedModel, replica_id: str) -> bool:
        return self.engine.starting_or_running(replica_id)

    def stop(self, model: HostedModel, replica_id: str) -> None:
        self.engine.remove_container(replica_id)

    def why_down(self, model: HostedModel, replica_id: str) -> str:
        """What the engine knows about a replica that does not answer: killed for memory, or its exit code."""
        state = self.engine.container_state(replica_id)
        if state.get("OOMKilled"):
            limit = model.manifest.get("resources", {}).get("memory", "")
            return "killed for running out of memory" + (f" (limit {limit}; raise resources.memory)" if limit else "")
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

    def remove(self, model: HostedModel) -> None:
        """Images are removed by hosting's delete, once no container uses them."""
