"""What the SDK and CLI read from the environment."""

from __future__ import annotations

from pydantic import Field

from mesh.config import EnvSettings, env_field


class ClientSettings(EnvSettings):
    gateway: str = env_field(
        "CONSTELLATION_GATEWAY", "", "host:port of the gateway (default: the local mesh's, else localhost:8080)"
    )
    api_key: str = Field(
        "", validation_alias="CONSTELLATION_API_KEY", description="the key presented on every call", repr=False
    )
    s3_endpoint_url: str = env_field(
        "CONSTELLATION_S3_ENDPOINT_URL", "", "S3-compatible endpoint for fetching s3:// outputs"
    )
