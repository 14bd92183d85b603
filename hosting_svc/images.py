"""The Docker engine, behind a small adapter: build, inspect, run, push, pull, remove.

Everything hosting creates carries `constellation.*` labels, so a restarted
hosting can find (and reconcile) what the engine holds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from docker.client import DockerClient, from_env
from docker.errors import APIError, BuildError, DockerException, ImageNotFound, NotFound

import model_runtime
from mesh.errors import FailedPrecondition, Unavailable

log = logging.getLogger("hosting.images")

LABEL_MODEL = "constellation.model_id"
LABEL_NAME = "constellation.model_name"
LABEL_VERSION = "constellation.model_version"
LABEL_MANIFEST = "constellation.manifest_digest"
LABEL_ROLE = "constellation.role"  # "smoke" for smoke-test containers, "replica" for deployments


class BuildFailed(Exception):
    def __init__(self, message: str, log_tail: list[str]) -> None:
        super().__init__(message)
        self.log_tail = log_tail


class Engine:
    def __init__(self, base_url: str | None = None) -> None:
        try:
            self.client = DockerClient(base_url=base_url) if base_url else from_env()
            self.client.ping()
        except DockerException as error:
            raise Unavailable(f"the Docker engine does not answer: {error}") from None

    @staticmethod
    def available(base_url: str | None = None) -> bool:
        try:
            (DockerClient(base_url=base_url) if base_url else from_env()).ping()
            return True
        except DockerException:
            return False

    def require_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
        except ImageNotFound:
            raise FailedPrecondition(f"base image {image} is missing: run scripts/make_base_image.sh") from None

    def build(self, context: Path, tag: str, labels: dict[str, str], on_line: Callable[[str], object]) -> str:
        """Build with the network off; streams log lines; returns the image id."""
        tail: list[str] = []
        image_id = ""
        try:
            for chunk in self.client.api.build(
                path=str(context),
                tag=tag,
                labels=labels,
                network_mode="none",
                rm=True,
                forcerm=True,
                decode=True,
                pull=False,
            ):
                if "stream" in chunk:
                    for line in chunk["stream"].splitlines():
                        if line.strip():
                            tail = (tail + [line])[-30:]
                            on_line(line)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    tail = (tail + [chunk["error"].strip()])[-30:]
                    raise BuildFailed(_summarise_build_error(tail), tail)
        except (APIError, BuildError) as error:
            raise BuildFailed(str(error), tail) from None
        if not image_id:
            image_id = self.client.images.get(tag).id
        return image_id

    def image_digest(self, image: str) -> str:
        found = self.client.images.get(image)
        digests = found.attrs.get("RepoDigests") or []
        return digests[0].split("@", 1)[1] if digests else found.id

    def image_size(self, image: str) -> int:
        return int(self.client.images.get(image).attrs["Size"])

    def read_file(self, image: str, path: str) -> str:
        output = self.client.containers.run(image, ["cat", path], remove=True, network_mode="none", user="10001")
        return output.decode()

    def run(self, image: str, name: str, port: int, labels: dict[str, str], resources: dict, restart: bool) -> str:
        """A hardened container on the host network serving on 127.0.0.1:port. Returns its id."""
        kwargs: dict = {
            "name": name,
            "detach": True,
            "network_mode": "host",
            "command": model_runtime.command("127.0.0.1", port),
            "environment": {"MODEL_PORT": str(port)},
            "labels": labels,
            "user": "10001",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            "tmpfs": {"/tmp": "rw,noexec,nosuid,size=64m"},
            "pids_limit": 256,
        }
        if restart:
            kwargs["restart_policy"] = {"Name": "unless-stopped"}
        if resources.get("cpu"):
            kwargs["nano_cpus"] = int(float(resources["cpu"]) * 1e9)
        if resources.get("memory"):
            kwargs["mem_limit"] = str(resources["memory"])
        container = self.client.containers.run(image, **kwargs)
        return container.id

    def logs(self, container_id: str, lines: int = 30) -> str:
        try:
            return self.client.containers.get(container_id).logs(tail=lines).decode(errors="replace")
        except (NotFound, APIError):
            return ""

    def starting_or_running(self, container_id: str) -> bool:
        """False once the container has exited (or is gone); a just-created container counts as alive."""
        return self.container_state(container_id).get("Status", "") in ("created", "running", "restarting")

    def container_state(self, container_id: str) -> dict:
        try:
            return self.client.containers.get(container_id).attrs["State"]
        except NotFound:
            return {}

    def remove_container(self, container_id: str) -> None:
        try:
            self.client.containers.get(container_id).remove(force=True)
        except NotFound:
            pass

    def containers(self, **labels: str) -> list:
        filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}
        return self.client.containers.list(all=True, filters=filters)

    def remove_image(self, image: str) -> bool:
        """Remove unless a container still uses it; True when removed."""
        try:
            self.client.images.remove(image, noprune=False)
            return True
        except ImageNotFound:
            return True
        except APIError as error:
            log.info("image kept", extra={"image": image, "reason": str(error)})
            return False

    def images(self, **labels: str) -> list:
        return self.client.images.list(filters={"label": [f"{k}={v}" for k, v in labels.items()]})

    def push(self, image: str, repository: str, tag: str, auth: dict | None) -> Iterator[dict]:
        self.client.images.get(image).tag(repository, tag)
        yield from self.client.api.push(repository, tag=tag, auth_config=auth, stream=True, decode=True)

    def pull(self, repository: str, tag: str, auth: dict | None):
        return self.client.images.pull(repository, tag=tag, auth_config=auth)


def _summarise_build_error(tail: list[str]) -> str:
    text = "\n".join(tail)
    conflict = re.search(r"(\S+ \S+ has requirement .+?, but you have .+?\.)", text)
    if conflict:
        return f"dependency conflict in the image: {conflict.group(1)}"
    return tail[-1] if tail else "the image build failed"
