"""Wiring for the agent: settings -> core catalog client -> planners -> servicer -> serve()."""

from __future__ import annotations

import os

from agent_svc.catalog import CoreCatalog
from agent_svc.gemini import GeminiSettings
from agent_svc.service import Agent
from agent_svc.servicer import AgentServicer
from mesh import config, logs
from mesh.server import MeshServer
from mesh.services import registration


def gemini_settings(env: dict[str, str]) -> GeminiSettings | None:
    key = env.get("GEMINI_API_KEY", "").strip()
    if not key:
        return None
    return GeminiSettings(
        api_key=key,
        model=env.get("CONSTELLATION_GEMINI_MODEL", "gemini-2.5-flash"),
        base_url=env.get("CONSTELLATION_GEMINI_BASE_URL", ""),
        attempts=int(env.get("CONSTELLATION_GEMINI_ATTEMPTS", "4")),
        backoff_s=float(env.get("CONSTELLATION_GEMINI_BACKOFF_S", "1.0")),
        repairs=int(env.get("CONSTELLATION_GEMINI_REPAIRS", "2")),
    )


def build(settings: config.Settings, env: dict[str, str] | None = None) -> MeshServer:
    env = dict(os.environ if env is None else env)
    catalog = CoreCatalog(settings.peers["core"])
    export_uri = env.get("CONSTELLATION_AGENT_EXPORT_URI") or f"file://{settings.home / 'outputs'}"
    agent = Agent(catalog, export_uri, gemini_settings(env))
    # The agent answers from core's catalog: it is SERVING only while core answers.
    return MeshServer(settings, [registration("agent", AgentServicer(agent), health_checks={"core": catalog.check})])


def main() -> None:
    settings = config.load("agent")
    logs.configure("agent", settings.log_level, settings.log_format)
    build(settings).serve_forever()
