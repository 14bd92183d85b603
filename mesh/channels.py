"""Client channels to mesh services: message limits, and mTLS with the caller's own certificate when the mesh
has TLS. Below `mesh.server` (which opens its own channel to core with them) and `mesh.services`."""

from __future__ import annotations

import grpc

from mesh.tls import TlsFiles


def channel_options(max_message_bytes: int = 64 * 1024 * 1024) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def insecure_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=channel_options())


def peer_channel(address: str, tls: TlsFiles | None) -> grpc.Channel:
    """A channel to a peer service: mTLS presenting `tls` (the caller's own certificate), or plaintext without."""
    if tls is None:
        return insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials(), options=channel_options())
