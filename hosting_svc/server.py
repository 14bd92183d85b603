"""Wiring for hosting: settings -> store, engine, runtimes -> domain -> servicer -> serve()."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from hosting_svc import images
from hosting_svc.deployments import Hosting
from hosting_svc.registry import Registry
from hosting_svc.runtimes import ModelLimits, Runtime, kubernetes, modal, swarm
from hosting_svc.runtimes.docker import DockerRuntime
from hosting_svc.runtimes.local import LocalRuntime
from hosting_svc.servicer import HostingServicer
from hosting_svc.settings import HostingSettings
from hosting_svc.store import Store
from mesh import config, logs
from mesh.config import ConfigError
from mesh.server import MeshServer
from mesh.services import registration

log = logging.getLogger("hosting")


def build(settings: config.Settings, env: Mapping[str, str] | None = None) -> tuple[MeshServer, Hosting]:
    own = HostingSettings.from_env(
        env, home=settings.home / "hosting", lease_ttl_s=settings.lease_ttl_s, lease_renew_s=settings.lease_renew_s
    )
    home = own.home
    store = Store(own.database_url)
    engine = images.Engine() if own.docker_wanted and images.Engine.available() else None
    limits = ModelLimits(own.model_memory, own.sandbox_max_processes, own.model_max_open_files, own.smoke_cpu_s)
    runtimes: dict[str, Runtime] = {"local": LocalRuntime(home / "local", own.allow_unconfined, limits=limits)}
    if engine is not None:
        # Hostings of two stacks on one engine may share a home path (/data under compose): their network tells
        # them apart.
        owner = f"{home}@{own.docker_network}" if own.docker_network else str(home)
        if own.docker_network:
            engine.join_network(own.docker_network)
        runtimes["docker"] = DockerRuntime(
            engine,
            owner=owner,
            base_image=own.base_image,
            builds=home / "builds",
            limits=limits,
            network=own.docker_network,
        )
    manager = engine is not None and own.swarm != "off" and swarm.SwarmRuntime.is_manager(engine)
    if own.swarm == "on" and not manager:
        raise ConfigError(
            "CONSTELLATION_HOSTING_SWARM=on needs a Docker engine that is a Swarm manager: run `docker swarm init`"
        )
    if manager and engine is not None:
        runtimes["swarm"] = swarm.SwarmRuntime(
            engine, str(home), swarm.parse_ports(own.swarm_ports), own.swarm_rollout_timeout_s, limits
        )
    if modal.configured(own):
        runtimes["modal"] = modal.ModalRuntime(home / "modal")
    kube_client = kubernetes.api_client(own)
    if kube_client is not None:
        runtimes["kubernetes"] = kubernetes.KubernetesRuntime(own, kube_client)
    hosting = Hosting(store, own, runtimes)
    hosting.reconcile()
    hosting.start_monitor()
    log.info("runtimes", extra={"runtimes": sorted(runtimes), "docker": engine is not None})
    checks = {"docker": lambda: engine.client.ping()} if engine is not None else {}
    server = MeshServer(
        settings, [registration("hosting", HostingServicer(hosting, Registry(engine, own)), health_checks=checks)]
    )
    return server, hosting


def main() -> None:
    settings = config.load_or_exit("hosting")
    logs.configure("hosting", settings.log_level, settings.log_format)
    server, hosting = build(settings)
    try:
        server.serve_forever()
    finally:
        hosting.close()
