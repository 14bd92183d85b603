"""Which role each method of the mesh needs: one table, checked by the interceptor before any servicer runs.

viewer reads, editor creates/changes/runs, admin manages users, keys and the machine (images, compose files,
stopping every deployment); `service` methods are internal: only a mesh service presenting the service key may
call them. A method that is not in the table is refused (fail closed); tests/test_identity.py walks every method
of every service in mesh.services.SERVICES and checks it has a row. Ownership (an editor changes only their own)
is the servicers' to check; the table only sets the floor.
"""

from __future__ import annotations

from mesh.identity import SERVICE_ROLE, Identity

VIEWER, EDITOR, ADMIN, SERVICE = "viewer", "editor", "admin", SERVICE_ROLE

# full service name -> method -> the weakest role that may call it
METHOD_ROLES: dict[str, dict[str, str]] = {
    "constellation.core.v1.CoreService": {
        "CreateDataset": EDITOR,
        "GetDataset": VIEWER,
        "ListDatasets": VIEWER,
        "UpdateDataset": EDITOR,
        "DeleteDataset": EDITOR,
        "ImportStacDatasets": EDITOR,
        "RegisterModel": EDITOR,
        "GetModel": VIEWER,
        "ListModels": VIEWER,
        "DeleteModel": EDITOR,
        "ImportModelFromStac": EDITOR,
        "CreatePipeline": EDITOR,
        "GetPipeline": VIEWER,
        "ListPipelines": VIEWER,
        "DeletePipeline": EDITOR,
        "ValidatePipeline": VIEWER,
        "RunPipeline": EDITOR,
        "GetRun": VIEWER,
        "ListRuns": VIEWER,
        "WatchRun": VIEWER,
        "CancelRun": EDITOR,
    },
    "constellation.core.v1.IdentityService": {
        "CreateUser": ADMIN,
        "GetUser": ADMIN,
        "ListUsers": ADMIN,
        "UpdateUser": ADMIN,
        # A user's own keys; the servicer lets only an admin name another user.
        "CreateApiKey": VIEWER,
        "ListApiKeys": VIEWER,
        "RevokeApiKey": VIEWER,
        "WhoAmI": VIEWER,
        "Authenticate": SERVICE,
    },
    "constellation.core.v1.AuditService": {
        "ListAuditEvents": ADMIN,
        # Hosting, the orchestrator and the agent send the records of their calls (mesh.audit.CoreAuditSink).
        "RecordAuditEvents": SERVICE,
    },
    "constellation.hosting.v1.HostingService": {
        "PackageModel": EDITOR,
        "DeployModel": EDITOR,
        "GetModelStatus": VIEWER,
        "WatchDeployment": VIEWER,
        "ListModels": VIEWER,
        "DeleteModel": EDITOR,
        "PullImage": ADMIN,
        "PushImage": ADMIN,
        "ExportCompose": ADMIN,
        "StopDeployments": ADMIN,
    },
    "constellation.orchestrator.v1.OrchestratorService": {
        # Core launches a run once it has resolved and checked it; users run pipelines through core.
        "LaunchRun": SERVICE,
        "GetRun": VIEWER,
        "ListRuns": VIEWER,
        "WatchRun": VIEWER,
        "CancelRun": EDITOR,
    },
    "constellation.agent.v1.AgentService": {
        "Recommend": VIEWER,
        "PlanPipeline": VIEWER,
    },
}


def required_role(method: str) -> str | None:
    """The role `method` ("/package.Service/Method") needs; None when the table has no row (refuse the call)."""
    service, _, name = method.lstrip("/").partition("/")
    return METHOD_ROLES.get(service, {}).get(name)


def denial(method: str, caller: Identity, acting: Identity) -> str | None:
    """Why `acting` (or `caller`, the service speaking for it) may not call `method`; None when it may."""
    name = method.rsplit("/", 1)[-1]
    needed = required_role(method)
    if needed is None:
        return unlisted(method)
    if needed == SERVICE:
        return None if caller.role == SERVICE else f"{name} is internal to the mesh: only its services may call it"
    if acting.at_least(needed):
        return None
    return f"{name} needs an {needed} key; this key's role is {acting.role}"


def unlisted(method: str) -> str:
    return f"{method.rsplit('/', 1)[-1]} has no row in the mesh's role table, so nobody may call it"
