"""The code location the Dagster UI loads (`python -m orchestrator_svc.ui`).

Pipeline jobs are built per run from their specs, so there is no fixed job to
list here; the UI shows every run, its events, logs and config from the
instance, and its Terminate button goes through the orchestrator's run
launcher like CancelRun does.
"""

from dagster import Definitions

defs = Definitions()
