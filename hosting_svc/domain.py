"""Hosted models and their deployment events, as plain Python.

The deployment state machine:

    PACKAGING -> BUILDING -> VALIDATING -> READY            (PackageModel)
    READY/HEALTHY/UNHEALTHY/FAILED -> [PUSHING] -> DEPLOYING -> HEALTHY  (DeployModel)
    HEALTHY <-> UNHEALTHY                                   (the monitor)
    any -> FAILED (with the reason and log tail), any -> DELETED

Every change is an event with a per-model sequence number, persisted before
it is published, so WatchDeployment can replay history and resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

STATES = (
    "packaging",
    "building",
    "validating",
    "ready",
    "pushing",
    "deploying",
    "healthy",
    "unhealthy",
    "failed",
    "deleted",
)
IN_PROGRESS = ("packaging", "building", "validating", "pushing", "deploying")
RUNTIMES = ("docker", "local", "modal", "kubernetes", "swarm")


@dataclass
class Endpoint:
    address: str
    replica_id: str
    healthy: bool = False


@dataclass
class HostedModel:
    id: str
    name: str
    version: str
    state: str = "packaging"
    state_message: str = ""
    source: dict = field(default_factory=dict)  # {"kind": "local"|"git"|"hf", ...}
    card: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    image: str = ""
    image_digest: str = ""
    runtime: str = ""
    environment: str = ""
    replicas: int = 0
    endpoints: list[Endpoint] = field(default_factory=list)
    installed_packages: list[str] = field(default_factory=list)
    last_updated: datetime | None = None
    deployed_at: datetime | None = None


@dataclass
class DeploymentEvent:
    sequence: int
    time: datetime
    model_id: str
    state: str
    message: str = ""
    log_line: str = ""
    endpoints: list[Endpoint] = field(default_factory=list)
