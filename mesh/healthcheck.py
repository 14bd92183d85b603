"""`python -m mesh.healthcheck HOST:PORT [SERVICE]`: exit 0 when the server answers SERVING.

Used by container health checks (compose.yaml), where no grpcurl is installed.
With CONSTELLATION_TLS_DIR set it connects over mTLS, presenting the `client`
certificate of that folder, or else the one identity's whose key the folder holds (a compose service's
folder holds only its own; health is open to any peer of the mesh's CA).
"""

import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.config import Settings
from mesh.services import peer_channel
from mesh.tls import CA_KEY, TlsFiles, files


def identity(folder: Path | None) -> TlsFiles | None:
    """The TLS files the check presents: `client`'s, else those of the one key pair in `folder`."""
    client = files(folder, "client")
    if folder is None or client is None or client.has_key_pair:
        return client
    pairs = sorted(
        key.stem for key in folder.glob("*.key") if key.name != CA_KEY and TlsFiles(folder, key.stem).has_key_pair
    )
    return TlsFiles(folder, pairs[0]) if len(pairs) == 1 else client


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    service = sys.argv[2] if len(sys.argv) > 2 else ""
    with peer_channel(sys.argv[1], identity(Settings.from_env().tls_dir)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError as error:
            print(f"{sys.argv[1]}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{sys.argv[1]}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
