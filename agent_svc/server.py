"""Wiring for agent: settings -> core catalog client -> planners -> servicer -> serve()."""

from __future__ import annotations

import logging
import os

from agent_svc import embeddings
from agent_svc.agent import Agent
from agent_svc.catalog_client import CoreCatalog
from agent_svc.planners.offline import OfflinePlanner
from agent_svc.servicer import AgentServicer
from agent_svc.settings import AgentSettings
from mesh import config, logs
from mesh.server import MeshServer
from mesh.services import registration
from mesh.tls import files

log = logging.getLogger("agent")


def build(settings: config.Settings, env: dict[str, str] | None = None) -> MeshServer:
    env = dict(os.environ) if env is None else env
    agent_settings = AgentSettings.load(settings.peers["core"], settings.home, env)
    embedder = embeddings.load(agent_settings.embeddings)
    catalog = CoreCatalog(
        agent_settings.core_address,
        agent_settings.catalog_ttl_s,
        agent_settings.core_timeout_s,
        embedder,
        settings.service_key,
        files(settings.tls_dir, "agent"),
    )
    offline = OfflinePlanner(catalog, agent_settings.export_uri)
    gemini = None
    if agent_settings.gemini is not None:
        from agent_svc.planners.gemini import GeminiPlanner  # the SDK loads only when a key is set

        gemini = GeminiPlanner(catalog, agent_settings.gemini, agent_settings.export_uri)
    log.info(
        "planners",
        extra={
            "default": "gemini" if gemini else "offline",
            "gemini_model": agent_settings.gemini.model if agent_settings.gemini else None,
            "core": agent_settings.core_address,
            "semantic_matching": "bm25+minilm" if embedder else "bm25",
        },
    )
    # The agent cannot answer without core's catalog, so its health follows core's.
    return MeshServer(
        settings, [registration("agent", AgentServicer(Agent(offline, gemini)), health_checks={"core": catalog.check})]
    )


def main() -> None:
    settings = config.load("agent")
    logs.configure("agent", settings.log_level, settings.log_format)
    build(settings).serve_forever()
