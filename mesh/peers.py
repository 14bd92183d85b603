"""Which mesh peer may call which method: the one table every service checks a caller's certificate against.

With TLS on (CONSTELLATION_TLS_DIR), every connection to a service carries a
client certificate from the mesh's CA, and `mesh.tls.peer_name` reads the
identity it names (core, hosting, orchestrator, agent, gateway or client).
`PeerInterceptor` lets a call through only when `RULES` lists that identity for
the method; anything else is PERMISSION_DENIED naming the rule. The gateway
carries every user's call, and `client` is the CLI or SDK talking straight to a
service, so both may call the public methods; a service may call only what it
needs of its peers (core drives runs on the orchestrator and deployments on
hosting; the agent reads core's catalog). Only core may launch or cancel an
orchestrator run: users start runs through core's RunPipeline, which checks the
pipeline and owns the run. Health and reflection are open to any verified peer.

This check is about which *program* calls, not which user: API keys (and the
roles they carry) are checked as well, by `mesh.interceptors`. Without TLS no
connection has a peer identity and this check does not run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from mesh.tls import peer_name

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
PUBLIC = frozenset({"gateway", "client"})
CORE = frozenset({"core"})
AGENT = frozenset({"agent"})
# Services that check a user's API key with core (mesh.auth.RemoteKeys).
KEY_CHECKERS = frozenset({"hosting", "orchestrator", "agent"})
# Services that send the records of their calls to core's audit log (mesh.audit.CoreAuditSink).
AUDIT_SENDERS = frozenset({"hosting", "orchestrator", "agent"})

# service -> method -> the peers that may call it. Every method of every mesh service has a row
# (tests/test_tls.py fails when a proto grows one without it): a new method is closed until someone decides.
RULES: dict[str, dict[str, frozenset[str]]] = {
    "constellation.core.v1.CoreService": {
        "CreateDataset": PUBLIC,
        "GetDataset": PUBLIC | AGENT,
        "ListDatasets": PUBLIC | AGENT,
        "UpdateDataset": PUBLIC,
        "DeleteDataset": PUBLIC,
        "ImportStacDatasets": PUBLIC,
        "RegisterModel": PUBLIC,
        "GetModel": PUBLIC | AGENT,
        "ListModels": PUBLIC | AGENT,
        "DeleteModel": PUBLIC,
        "ImportModelFromStac": PUBLIC,
        "CreatePipeline": PUBLIC,
        "GetPipeline": PUBLIC | AGENT,
        "ListPipelines": PUBLIC | AGENT,
        "DeletePipeline": PUBLIC,
        "ValidatePipeline": PUBLIC | AGENT,
        "RunPipeline": PUBLIC,
        "GetRun": PUBLIC,
        "ListRuns": PUBLIC,
        "WatchRun": PUBLIC,
        "CancelRun": PUBLIC,
    },
    "constellation.core.v1.IdentityService": {
        "CreateUser": PUBLIC,
        "GetUser": PUBLIC,
        "ListUsers": PUBLIC,
        "UpdateUser": PUBLIC,
        "CreateApiKey": PUBLIC,
        "ListApiKeys": PUBLIC,
        "RevokeApiKey": PUBLIC,
        "WhoAmI": PUBLIC,
        "Authenticate": KEY_CHECKERS,
    },
    "constellation.core.v1.AuditService": {
        "ListAuditEvents": PUBLIC,
        "RecordAuditEvents": AUDIT_SENDERS,
    },
    "constellation.hosting.v1.HostingService": {
        # What core's run driver uses to find, package and deploy a run's models (clients.hosting).
        "PackageModel": PUBLIC | CORE,
        "DeployModel": PUBLIC | CORE,
        "GetModelStatus": PUBLIC | CORE,
        "WatchDeployment": PUBLIC | CORE,
        "ListModels": PUBLIC | CORE,
        "DeleteModel": PUBLIC,
        "PullImage": PUBLIC,
        "PushImage": PUBLIC,
        "ExportCompose": PUBLIC,
        "StopDeployments": PUBLIC,
    },
    "constellation.orchestrator.v1.OrchestratorService": {
        "LaunchRun": CORE,
        "CancelRun": CORE,
        "GetRun": PUBLIC | CORE,
        "ListRuns": PUBLIC | CORE,
        "WatchRun": PUBLIC | CORE,
    },
    "constellation.agent.v1.AgentService": {
        "Recommend": PUBLIC,
        "PlanPipeline": PUBLIC,
    },
}


def denial(method: str, peer: str | None) -> str | None:
    """Why `peer` may not call `method` (a full path, /package.Service/Method), or None when it may."""
    if peer is None:
        return "the connection carries no verified client certificate"
    if method.startswith(OPEN_PREFIXES):
        return None
    service, _, name = method.strip("/").partition("/")
    allowed = RULES.get(service, {}).get(name)
    if allowed is None:
        return f"no peer rule names {method} (mesh/peers.py), so no peer may call it"
    if peer in allowed:
        return None
    return (
        f"peer {peer!r} may not call {name}: the rule for {service.rsplit('.', 1)[-1]}.{name} "
        f"allows {', '.join(sorted(allowed))} (mesh/peers.py)"
    )


class PeerInterceptor(grpc.ServerInterceptor):
    """Refuses a call whose verified client certificate names a peer the method's rule does not list."""

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method

        def checked(behaviour: Callable) -> Callable:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                reason = denial(method, peer_name(context))
                if reason is not None:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
                return behaviour(request, context)

            return run

        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        return handler._replace(**{kind: checked(getattr(handler, kind)) for kind in kinds if getattr(handler, kind)})
