"""What the SDK and CLI read from the environment."""

from __future__ import annotations

from mesh.config import EnvSettings, env_field, secret_field


class ClientSettings(EnvSettings):
    gateway: str = env_field(
        "CONSTELLATION_GATEWAY", "", "host:port of the gateway (default: the local mesh's, else localhost:8080)"
    )
    api_key: str = secret_field("CONSTELLATION_API_KEY", "the key presented on every call")
    tls_dir_raw: str = env_field(
        "CONSTELLATION_TLS_DIR",
        "",
        "the mesh's certificates: connect with TLS trusting its ca.crt, presenting client.crt when it is there "
        "(default: the local mesh's when it runs with TLS, else plaintext)",
    )
    s3_endpoint_url: str = env_field(
        "CONSTELLATION_S3_ENDPOINT_URL", "", "S3-compatible endpoint for fetching s3:// outputs"
    )
