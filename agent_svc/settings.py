"""The agent's own settings, read once from the environment next to mesh.config's.

GEMINI_API_KEY keeps its ecosystem name; everything else is CONSTELLATION_AGENT_*.
The key is kept out of repr() so a logged settings object cannot leak it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from agent_svc.planners.gemini import GeminiSettings
from mesh.config import EnvSettings, env_field, secret_field

PREFIX = "CONSTELLATION_AGENT_"


class AgentSettings(EnvSettings):
    core_address: str = Field("", description="core's host:port (from the bootstrap's peers; not read)")
    export_uri_raw: str = env_field(
        PREFIX + "EXPORT_URI",
        "",
        "where planned pipelines export: file:///abs/dir or s3://bucket/prefix (default $CONSTELLATION_HOME/outputs)",
    )
    home: Path = Field(Path("."), description="the mesh's home (from the bootstrap; not read)")
    catalog_ttl_s: float = env_field(
        PREFIX + "CATALOG_TTL_S", 5.0, "how long a snapshot of core's catalog is reused", ge=0
    )
    core_timeout_s: float = env_field(PREFIX + "CORE_TIMEOUT_S", 10.0, "deadline of one call to core", ge=0)
    embeddings: Literal["auto", "off"] = env_field(
        PREFIX + "EMBEDDINGS", "auto", "auto: MiniLM embeddings when installed, else BM25; off: BM25"
    )
    gemini_api_key: str = secret_field("GEMINI_API_KEY", "turns the Gemini planner on; empty: the offline planner only")
    gemini_model: str = env_field(PREFIX + "GEMINI_MODEL", "gemini-2.5-flash", "Gemini model name")
    gemini_base_url: str = env_field(PREFIX + "GEMINI_BASE_URL", "", "Gemini API base URL (empty: the SDK's default)")
    gemini_timeout_s: float = env_field(PREFIX + "GEMINI_TIMEOUT_S", 60.0, "deadline of one Gemini call", ge=0)
    gemini_attempts: int = env_field(PREFIX + "GEMINI_ATTEMPTS", 4, "tries of a Gemini call on 429/5xx", ge=1)
    gemini_backoff_s: float = env_field(PREFIX + "GEMINI_BACKOFF_S", 1.0, "first wait between tries; it doubles", ge=0)
    gemini_max_backoff_s: float = env_field(PREFIX + "GEMINI_MAX_BACKOFF_S", 16.0, "longest wait between tries", ge=0)
    gemini_max_repairs: int = env_field(
        PREFIX + "GEMINI_MAX_REPAIRS", 3, "rounds of fixing an invalid plan with Gemini", ge=0
    )
    gemini_max_tool_rounds: int = env_field(
        PREFIX + "GEMINI_MAX_TOOL_ROUNDS", 6, "catalog look-ups Gemini may make per plan", ge=0
    )

    @field_validator("embeddings", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("export_uri_raw")
    @classmethod
    def _export_uri(cls, value: str) -> str:
        if value and not value.startswith(("file:///", "s3://")):
            raise ValueError("must be file:///abs/dir or s3://bucket/prefix")
        return value

    @property
    def export_uri(self) -> str:
        return self.export_uri_raw or f"file://{(self.home / 'outputs').resolve()}"

    @property
    def gemini(self) -> GeminiSettings | None:
        if not self.gemini_api_key:
            return None
        return GeminiSettings(
            api_key=self.gemini_api_key,
            model=self.gemini_model,
            base_url=self.gemini_base_url,
            timeout_s=self.gemini_timeout_s,
            attempts=self.gemini_attempts,
            backoff_s=self.gemini_backoff_s,
            max_backoff_s=self.gemini_max_backoff_s,
            max_repairs=self.gemini_max_repairs,
            max_tool_rounds=self.gemini_max_tool_rounds,
        )

    @classmethod
    def load(cls, core_address: str, home: Path, env: Mapping[str, str] | None = None) -> AgentSettings:
        return cls.from_env(env, core_address=core_address, home=home)
