"""Orchestrator: runs pipeline specs as Dagster jobs over GeoTIFF/COG rasters and streams their events.

- `server`, `servicer`: wiring and the OrchestratorService RPCs (LaunchRun, GetRun, ListRuns, WatchRun, CancelRun);
- `specs`: a LaunchRunRequest checked with the `pipeline` package's rules and turned into a plan of configured ops,
  then checked against the world (scenes readable, destinations writable);
- `jobs`, `ops`, `blocks`: the plan as a Dagster job; each block kind's op and its windowed raster work;
- `runs`, `launcher`, `worker`, `instance`: runs on a persistent Dagster instance, one worker process per run;
- `events`: Dagster's event log as RunEvents;
- `settings`: the orchestrator's settings; `ui`: the Dagster UI on the same instance.

See docs/architecture.md.
"""
