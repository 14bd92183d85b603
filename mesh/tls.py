"""The mesh's TLS files and the gRPC credentials made from them.

A certificates folder (`constellation certs`, `mesh.certs`; CONSTELLATION_TLS_DIR)
holds the mesh's CA (`ca.crt`) and one key pair per identity (`<name>.crt`,
`<name>.key`): the four services, the gateway and `client` (the CLI and SDK
talking straight to a service). Every certificate names its identity twice: in
its subject CN and as the SAN URI `spiffe://constellation/<name>`; a peer's
identity is read from the certificate its TLS handshake verified against the CA
(`peer_name`), never from anything the caller writes itself.

Services serve with `require_client_auth=True` (mTLS): a client without a
certificate of this CA cannot even finish the handshake. Without a folder
everything is plaintext and there are no peer identities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
# The identities `constellation certs` issues a certificate to.
IDENTITIES = ("core", "hosting", "orchestrator", "agent", "gateway", "client")
SPIFFE_PREFIX = "spiffe://constellation/"


class TlsError(ValueError):
    """A certificates folder lacks a file the caller needs."""


@dataclass(frozen=True)
class TlsFiles:
    """The CA and `name`'s key pair in `folder`."""

    folder: Path
    name: str

    @property
    def ca(self) -> Path:
        return self.folder / CA_CERT

    @property
    def cert(self) -> Path:
        return self.folder / f"{self.name}.crt"

    @property
    def key(self) -> Path:
        return self.folder / f"{self.name}.key"

    @property
    def has_key_pair(self) -> bool:
        return self.cert.is_file() and self.key.is_file()

    def check(self, need_key_pair: bool = True) -> TlsFiles:
        """Self, when the files it needs exist; raises TlsError naming the missing one and the fix."""
        wanted = [self.ca, *((self.cert, self.key) if need_key_pair else ())]
        missing = [path for path in wanted if not path.is_file()]
        if missing:
            raise TlsError(
                f"{missing[0]} is missing: make the mesh's certificates with `constellation certs` "
                f"(CONSTELLATION_HOME/certs) or point CONSTELLATION_TLS_DIR at them"
            )
        return self

    def _read(self, with_key_pair: bool) -> tuple[bytes, bytes | None, bytes | None]:
        ca = self.ca.read_bytes()
        if not with_key_pair:
            return ca, None, None
        return ca, self.key.read_bytes(), self.cert.read_bytes()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve as `name` and accept only clients with a certificate from the mesh's CA (mTLS)."""
        ca, key, cert = self.check()._read(True)
        assert key is not None and cert is not None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Trust the mesh's CA; present `name`'s certificate when there is one (a client with only the CA can still
        reach a gateway that does not ask for one)."""
        ca, key, cert = self.check(need_key_pair=False)._read(self.has_key_pair)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def files(folder: Path | None, name: str) -> TlsFiles | None:
    """`name`'s TLS files in `folder`, or None when TLS is off (no folder)."""
    return TlsFiles(folder, name) if folder is not None else None


def peer_name(context: grpc.ServicerContext) -> str | None:
    """The identity in the client certificate the handshake verified (its spiffe://constellation/ URI, else its
    CN); None on a plaintext connection."""
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    for uri in auth.get("peer_uri", []):
        text = uri.decode(errors="replace")
        if text.startswith(SPIFFE_PREFIX):
            return text.removeprefix(SPIFFE_PREFIX)
    common_names = auth.get("x509_common_name", [])
    return common_names[0].decode(errors="replace") if common_names else None
