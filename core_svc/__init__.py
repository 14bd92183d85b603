"""Core: the catalog of datasets, models and pipelines, and the runs that tie the mesh together.

- `server`: wiring: settings -> database -> catalog and runs -> servicer -> serve();
- `settings`: `CoreSettings`, core's own environment variables (the bootstrap's are mesh.config);
- `servicer`: CoreService, IdentityService and AuditService over gRPC, one line per RPC; `convert`: protobuf <->
  domain;
- `ownership`: who may change, delete, run or cancel what (owners on every dataset, model, pipeline and run);
- `audit`: the audit log's store (core's own records, the batches other services send, ListAuditEvents, retention);
- `accounts`: users and their API keys (stored as a key id and the sha256 of the secret), and the check of a
  user key that every service's interceptor relies on (directly here, through `Authenticate` elsewhere);
- `domain`: the resources as dataclasses; `validation`: dataset and model checks (pipeline specs are
  validated by the `pipeline` package against views of the catalog, in `catalog`);
- `db` (tables, Alembic migrations in `migrations/`), `catalog` (datasets, models, pipelines in SQL),
  `listing` (filters and page tokens of every List RPC);
- runs: `runs` (the API the servicer calls and the invariant that makes a run survive a restart),
  `run_store` (run rows and events), `run_driver` (one run's stages: deploy, launch, follow the
  orchestrator), `deployments` (the run's side of hosting: deploy a model, watch its deployments).
"""
