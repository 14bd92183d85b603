"""The agent's own settings, read once from the environment next to mesh.config's.

GEMINI_API_KEY keeps its ecosystem name; everything else is CONSTELLATION_AGENT_*.
The key is kept out of repr() so a logged settings object cannot leak it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent_svc.planners.gemini import GeminiSettings
from mesh.config import ConfigError


def _number(env: dict[str, str], name: str, default: float, kind: type = float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class AgentSettings:
    core_address: str
    export_uri: str
    catalog_ttl_s: float = 5.0
    core_timeout_s: float = 10.0
    embeddings: str = "auto"  # "auto": MiniLM embeddings when installed, else BM25; "off": BM25
    gemini: GeminiSettings | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, core_address: str, home: Path, env: dict[str, str] | None = None) -> AgentSettings:
        env = dict(os.environ) if env is None else env
        key = env.get("GEMINI_API_KEY", "").strip()
        gemini = None
        if key:
            gemini = GeminiSettings(
                api_key=key,
                model=env.get("CONSTELLATION_AGENT_GEMINI_MODEL", "").strip() or "gemini-2.5-flash",
                base_url=env.get("CONSTELLATION_AGENT_GEMINI_BASE_URL", "").strip(),
                timeout_s=_number(env, "CONSTELLATION_AGENT_GEMINI_TIMEOUT_S", 60.0),
                attempts=max(1, int(_number(env, "CONSTELLATION_AGENT_GEMINI_ATTEMPTS", 4, int))),
                backoff_s=_number(env, "CONSTELLATION_AGENT_GEMINI_BACKOFF_S", 1.0),
                max_backoff_s=_number(env, "CONSTELLATION_AGENT_GEMINI_MAX_BACKOFF_S", 16.0),
                max_repairs=int(_number(env, "CONSTELLATION_AGENT_GEMINI_MAX_REPAIRS", 3, int)),
                max_tool_rounds=int(_number(env, "CONSTELLATION_AGENT_GEMINI_MAX_TOOL_ROUNDS", 6, int)),
            )
        export_uri = env.get("CONSTELLATION_AGENT_EXPORT_URI", "").strip() or f"file://{(home / 'outputs').resolve()}"
        if not export_uri.startswith(("file:///", "s3://")):
            raise ConfigError(f"CONSTELLATION_AGENT_EXPORT_URI must be file:///abs/dir or s3://bucket/prefix, got {export_uri!r}")
        return cls(
            core_address=core_address,
            export_uri=export_uri,
            catalog_ttl_s=_number(env, "CONSTELLATION_AGENT_CATALOG_TTL_S", 5.0),
            core_timeout_s=_number(env, "CONSTELLATION_AGENT_CORE_TIMEOUT_S", 10.0),
            embeddings=_choice(env, "CONSTELLATION_AGENT_EMBEDDINGS", ("auto", "off")),
            gemini=gemini,
        )
