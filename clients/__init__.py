"""Shared clients: what more than one service (or the SDK) needs to talk to another part of the mesh.

- `hosting`: find, package, deploy and follow a model on the hosting service (core, CLI, SDK);
- `inference`: the one V2 (Open Inference Protocol) inference client (hosting, orchestrator, benchmarks);
- `paging`: read a List RPC to its end, page token by page token;
- `storage`: read and write `file://` and `s3://` objects (orchestrator, SDK).
"""
