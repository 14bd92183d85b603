"""mesh.channels.target: what gRPC target (and balancing) a peer address becomes. A host name (a compose service,
a Kubernetes Service) resolves to every replica, so it is balanced round robin over them; tests/test_compose.py
runs it against two core replicas."""

from __future__ import annotations

import pytest

from mesh.channels import target

ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("core:50051", ("dns:///core:50051", ROUND_ROBIN)),
        ("core.mesh.svc.cluster.local:50051", ("dns:///core.mesh.svc.cluster.local:50051", ROUND_ROBIN)),
        ("127.0.0.1:50051,127.0.0.1:50061", ("ipv4:127.0.0.1:50051,127.0.0.1:50061", ROUND_ROBIN)),
        # One address gRPC needs no resolver for, or that names this host only: as given, pick first.
        ("127.0.0.1:50051", ("127.0.0.1:50051", [])),
        ("[::1]:50051", ("[::1]:50051", [])),
        ("localhost:8080", ("localhost:8080", [])),
        ("dns:///core:50051", ("dns:///core:50051", [])),
    ],
)
def test_target(address, expected):
    assert target(address) == expected
