"""What the SDK and CLI read from the environment."""

from __future__ import annotations

from pathlib import Path

from mesh import credentials
from mesh.config import EnvSettings, env_field, home_path, secret_field


class ClientSettings(EnvSettings):
    gateway: str = env_field(
        "CONSTELLATION_GATEWAY", "", "host:port of the gateway (default: the local mesh's, else localhost:8080)"
    )
    api_key: str = secret_field(
        "CONSTELLATION_API_KEY",
        "the key presented on every call (default: the local mesh's generated key, "
        "$CONSTELLATION_HOME/credentials/admin.key)",
    )
    home_raw: str = env_field("CONSTELLATION_HOME", "", "the local mesh's home, where its generated admin key is")
    tls_dir_raw: str = env_field(
        "CONSTELLATION_TLS_DIR",
        "",
        "the mesh's certificates: connect with TLS trusting its ca.crt, presenting client.crt when it is there "
        "(default: the local mesh's when it runs with TLS, else plaintext)",
    )
    s3_endpoint_url: str = env_field(
        "CONSTELLATION_S3_ENDPOINT_URL", "", "S3-compatible endpoint for fetching s3:// outputs"
    )

    @property
    def home(self) -> Path:
        return home_path(self.home_raw)

    def key(self) -> str:
        """CONSTELLATION_API_KEY, else the local mesh's generated admin key when this user can read it, else "".
        Raises credentials.CredentialError for a key file that others could read."""
        if self.api_key:
            return self.api_key
        try:
            return credentials.read_admin_key(self.home) or ""
        except PermissionError:  # another user's home: not ours to use
            return ""
