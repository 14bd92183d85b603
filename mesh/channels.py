"""Client channels to mesh services: message limits, and mTLS with the caller's own certificate when the mesh
has TLS. Below `mesh.server` (which opens its own channel to core with them) and `mesh.services`."""

from __future__ import annotations

import ipaddress

import grpc

from mesh.tls import TlsFiles


def channel_options(max_message_bytes: int = 64 * 1024 * 1024) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def target(address: str) -> tuple[str, list[tuple[str, str]]]:
    """gRPC's target and options for `address`: one host:port, or several comma separated (replicas of a
    service, e.g. "127.0.0.1:50051,127.0.0.1:50061"), which become one `ipv4:`/`ipv6:` target balanced
    round robin; gRPC leaves a replica that stops answering out until it answers again. A host name (a compose
    service such as "core:50051", a Kubernetes Service) becomes a `dns:///` target balanced round robin over
    every address it resolves to: the replicas of `docker-compose up --scale core=2`. gRPC resolves the name
    again when a connection drops, so a replica added later joins then."""
    addresses = [a.strip() for a in address.split(",") if a.strip()]
    balancing = [("grpc.lb_policy_name", "round_robin")]
    if len(addresses) < 2:
        host = address.strip().rpartition(":")[0]
        named = host and host != "localhost" and not is_ip(host)
        if named and not address.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
            return f"dns:///{address.strip()}", balancing
        return address, []
    scheme = "ipv6" if addresses[0].startswith("[") else "ipv4"
    return f"{scheme}:{','.join(addresses)}", balancing


def is_ip(host: str) -> bool:
    """Whether `host` is an IP address (v6 with or without brackets), not a name to resolve."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def insecure_channel(address: str) -> grpc.Channel:
    name, balancing = target(address)
    return grpc.insecure_channel(name, options=[*channel_options(), *balancing])


def peer_channel(address: str, tls: TlsFiles | None) -> grpc.Channel:
    """A channel to a peer service (or its replicas: see `target`): mTLS presenting `tls` (the caller's own
    certificate), or plaintext without."""
    if tls is None:
        return insecure_channel(address)
    name, balancing = target(address)
    return grpc.secure_channel(name, tls.channel_credentials(), options=[*channel_options(), *balancing])
