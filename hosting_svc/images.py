"""The Docker engine, behind a small adapter: build, inspect, run, push, pull, remove.

Everything hosting creates carries `constellation.*` labels, so a restarted
hosting can find (and reconcile) what the engine holds.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from docker.client import DockerClient, from_env
from docker.errors import APIError, BuildError, DockerException, ImageNotFound, NotFound
from docker.types import Ulimit
from docker.utils.socket import STDOUT, frames_iter

import model_runtime
from mesh.errors import FailedPrecondition, Unavailable

log = logging.getLogger("hosting.images")

LABEL_MODEL = "constellation.model_id"
LABEL_NAME = "constellation.model_name"
LABEL_VERSION = "constellation.model_version"
LABEL_MANIFEST = "constellation.manifest_digest"
LABEL_ROLE = "constellation.role"  # "smoke" for smoke-test containers, "replica" for deployments


TMP_BYTES = 64 << 20  # a container's /tmp, its only writable folder
PIDS_LIMIT = 256  # processes and threads per container
CPU_GRACE_S = 5  # between the CPU time limit's SIGXCPU and its SIGKILL
# Runs in a model container by `docker exec` (the image's python): its stdin and stdout joined to 127.0.0.1:PORT.
EXEC_BRIDGE = """
import os, socket, sys, threading
model = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def send():
    while data := os.read(0, 65536):
        model.sendall(data)
    model.shutdown(socket.SHUT_WR)
threading.Thread(target=send, daemon=True).start()
while data := model.recv(65536):
    os.write(1, data)
"""


@dataclass(frozen=True)
class ContainerLimits:
    memory_bytes: int  # memory limit, swap included
    open_files: int
    cpus: float = 0.0  # CPU quota in cores; 0: none
    cpu_s: int = 0  # CPU time of each process (RLIMIT_CPU); 0: none


class BuildFailed(Exception):
    def __init__(self, message: str, log_tail: list[str]) -> None:
        super().__init__(message)
        self.log_tail = log_tail


MODEL_DOMAIN = "models"


def network_alias(name: str) -> str:
    """The name a model container on a Docker network answers to there: its own name under .models, the
    suffix the orchestrator's CONSTELLATION_ORCHESTRATOR_MODEL_HOSTS allows (only hosting gives containers
    such aliases)."""
    return f"{name}.{MODEL_DOMAIN}"


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

    def join_network(self, name: str) -> None:
        """Make the Docker network `name` unless it exists (internal: no route out; compose's stacks name it after
        their project), and connect the container this process runs in, when it is one of this engine's (hosting
        under compose), so that it reaches the replicas there. The network is not compose's: like the replicas
        on it, it outlives `docker-compose down`."""
        try:
            network = self.client.networks.get(name)
        except NotFound:
            try:
                network = self.client.networks.create(
                    name, driver="bridge", internal=True, labels={LABEL_ROLE: "models"}
                )
            except APIError:  # another hosting instance made it meanwhile
                network = self.client.networks.get(name)
        try:
            own = self.client.containers.get(socket.gethostname())
        except (NotFound, APIError):
            return  # not in a container of this engine
        if own.id not in {c.id for c in network.containers}:
            network.connect(own)

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

    def run(
        self,
        image: str,
        name: str,
        port: int,
        labels: dict[str, str],
        limits: ContainerLimits,
        restart: bool,
        host_network: bool = True,
        network: str = "",
    ) -> str:
        """A hardened container serving on 127.0.0.1:port: of the host's network, or of its own (no network,
        reached through `ExecForwarder`); or, given a Docker `network`, on port of its own address on that
        network (no port on the host), reached there as network_alias(name):port. Returns its id."""
        kwargs: dict = {
            "name": name,
            "detach": True,
            "network_mode": "host" if host_network else "none",
            "command": model_runtime.command("127.0.0.1", port),
            "environment": {"MODEL_PORT": str(port)},
            "labels": labels,
            "user": "10001",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,noexec,nosuid,size={TMP_BYTES}"},
            "pids_limit": PIDS_LIMIT,
            "mem_limit": limits.memory_bytes,
            "memswap_limit": limits.memory_bytes,
            "ulimits": [
                Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                Ulimit(name="fsize", soft=TMP_BYTES, hard=TMP_BYTES),
                Ulimit(name="core", soft=0, hard=0),
                *([Ulimit(name="cpu", soft=limits.cpu_s, hard=limits.cpu_s + CPU_GRACE_S)] if limits.cpu_s else []),
            ],
        }
        if network:
            del kwargs["network_mode"]
            kwargs.update(
                network=network,
                networking_config={network: self.client.api.create_endpoint_config(aliases=[network_alias(name)])},
                command=model_runtime.command("0.0.0.0", port),  # noqa: S104 - its own network namespace
            )
        if restart:
            kwargs["restart_policy"] = {"Name": "unless-stopped"}
        if limits.cpus:
            kwargs["nano_cpus"] = int(limits.cpus * 1e9)
        container = self.client.containers.run(image, **kwargs)
        return container.id

    def forward(self, container_id: str, port: int) -> ExecForwarder:
        """127.0.0.1:<a free port> on the host, forwarded to 127.0.0.1:port inside a container without a network."""
        return ExecForwarder(self.client, container_id, port)

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
        """Gone afterwards, also when it went first (a Swarm task, a replica already removed)."""
        try:
            self.client.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as error:
            if error.status_code != 409 or "already in progress" not in str(error):
                raise

    def containers(self, **labels: str) -> list:
        """Those with the labels now; one removed while they are listed is left out."""
        filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}
        return self.client.containers.list(all=True, filters=filters, ignore_removed=True)

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


class ExecForwarder:
    """A host port into a container that has no network: each connection runs EXEC_BRIDGE in the container
    (`docker exec`, as the image's user) and copies bytes both ways. For the smoke test, which makes a few
    connections; `close()` stops accepting."""

    def __init__(self, client: DockerClient, container_id: str, port: int) -> None:
        self.client, self.container_id, self.container_port = client, container_id, port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, name="exec-forward", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._forward, args=(connection,), name="exec-forward", daemon=True).start()

    def _forward(self, connection: socket.socket) -> None:
        try:
            exec_id = self.client.api.exec_create(
                self.container_id, ["python", "-c", EXEC_BRIDGE, str(self.container_port)], stdin=True, stderr=False
            )["Id"]
            stream = self.client.api.exec_start(exec_id, socket=True)
        except (APIError, NotFound):  # the container is gone or stopping: the caller sees UNAVAILABLE
            connection.close()
            return
        raw = getattr(stream, "_sock", stream)  # the socket under docker's SocketIO: writes go to exec's stdin

        def send() -> None:
            try:
                while data := connection.recv(1 << 16):
                    raw.sendall(data)
                raw.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=send, name="exec-forward", daemon=True).start()
        try:
            for stream_id, data in frames_iter(stream, tty=False):
                if stream_id == STDOUT:
                    connection.sendall(data)
        except OSError:
            pass
        finally:
            connection.close()
            stream.close()

    def close(self) -> None:
        self.listener.close()


def _summarise_build_error(tail: list[str]) -> str:
    text = "\n".join(tail)
    conflict = re.search(r"(\S+ \S+ has requirement .+?, but you have .+?\.)", text)
    if conflict:
        return f"dependency conflict in the image: {conflict.group(1)}"
    return tail[-1] if tail else "the image build failed"
