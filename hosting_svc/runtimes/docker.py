"""Replicas as hardened containers on the host network, each bound to 127.0.0.1:port.

Images are built here too: the model folder and its wheelhouse become a build
context (packaging.py, pure) that the engine builds with the network off.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from hosting_svc import images, packaging
from hosting_svc.domain import HostedModel
from hosting_svc.runtimes import LogLine, Replica, StateChange

log = logging.getLogger("hosting")

LABEL_OWNER = "constellation.owner"


class DockerRuntime:
    name = "docker"
    scales_itself = False

    def __init__(
        self, engine: images.Engine, owner: str = "", base_image: str = "", builds: Path | None = None
    ) -> None:
        self.engine = engine
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
            stale.remove(force=True)
        labels["constellation.replica_name"] = name
        container_id = self.engine.run(
            model.image, name, port, labels, model.manifest.get("resources", {}), restart=True
        )
        return Replica(container_id, f"127.0.0.1:{port}")

    def start_trial(self, model: HostedModel, port: int) -> Replica:
        labels = {**self._image_labels(model), images.LABEL_ROLE: "smoke", LABEL_OWNER: self.owner}
        container_id = self.engine.run(model.image, f"constellation-smoke-{model.id}", port, labels, {}, restart=False)
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

    def discard_trials(self, model_id: str = "") -> None:
        wanted = {
            images.LABEL_ROLE: "smoke",
            LABEL_OWNER: self.owner,
            **({images.LABEL_MODEL: model_id} if model_id else {}),
        }
        for container in self.engine.containers(**wanted):
            container.remove(force=True)

    def remove(self, model: HostedModel) -> None:
        """Every container of the model, then its image unless another container still uses it."""
        for container in self.engine.containers(**{images.LABEL_MODEL: model.id}):
            container.remove(force=True)
        if model.image and not self.engine.remove_image(model.image):
            log.info("image kept: in use", extra={"image": model.image})
