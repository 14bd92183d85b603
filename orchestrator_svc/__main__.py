"""Orchestrator: `python -m orchestrator_svc` serves OrchestratorService (see docs/architecture.md).
The Dagster UI on the same instance: `python -m orchestrator_svc.ui`."""

from orchestrator_svc.server import main

main()
