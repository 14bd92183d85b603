"""What the audit log costs a mutating call: core's UpdateDataset with the audit log on vs off.

    .venv/bin/python bench/audit_overhead.py [--seconds 20] [--concurrency 4] [--database-url URL]

Starts two cores in this process, identical but for the audit sink (core's own database, as `core_svc.server`
wires it, or none), each on its own database (SQLite files by default; with --database-url, two PostgreSQL
databases created on that server), seeds a dataset in each, and alternates rounds of UpdateDataset between them
(three each, `seconds` in total per path) so machine noise hits both alike. Prints requests/s, p50 and p99 per
path, the ratios, and the audit records written. Target: the audit log keeps >= 90% of the throughput and adds
< 0.5 ms at p50.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

from sqlalchemy import func, select  # noqa: E402

from bench.gateway_overhead import ROUNDS, load, summary  # noqa: E402
from clients.roots import StorageRoots  # noqa: E402
from constellation.core.v1 import core_pb2, core_pb2_grpc  # noqa: E402
from core_svc import db  # noqa: E402
from core_svc.audit import AuditStore  # noqa: E402
from core_svc.catalog import Catalog  # noqa: E402
from core_svc.db import migrate  # noqa: E402
from core_svc.runs import Runs  # noqa: E402
from core_svc.servicer import AuditServicer, CoreServicer  # noqa: E402
from core_svc.settings import CoreSettings  # noqa: E402
from core_svc.stac import StacReader  # noqa: E402
from mesh import config  # noqa: E402
from mesh.db import create_db_engine  # noqa: E402
from mesh.server import MeshServer  # noqa: E402
from mesh.services import insecure_channel, registration  # noqa: E402
from tests.conftest import TEST_STORAGE_ROOTS  # noqa: E402
from tests.pg import create_database, free_port  # noqa: E402


def start_core(work: Path, database_url: str, audited: bool) -> MeshServer:
    """Core as core_svc.server.build wires it, with or without its audit sink."""
    env = {
        "CONSTELLATION_HOME": str(work),
        "CONSTELLATION_CORE_PORT": "0",
        "CONSTELLATION_CORE_METRICS_PORT": "0",
        "CONSTELLATION_HOSTING_ADDR": f"127.0.0.1:{free_port()}",
        "CONSTELLATION_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}",
        "DATABASE_URL": database_url,
    }
    settings = config.load("core", env)
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    roots = StorageRoots.from_env(TEST_STORAGE_ROOTS)
    catalog = Catalog(engine, roots)
    core_settings = CoreSettings.load(settings, env)
    runs = Runs(engine, catalog, core_settings)
    store = AuditStore(engine, retention_days=90)
    server = MeshServer(
        settings,
        [
            registration("core", CoreServicer(catalog, runs, StacReader(roots, core_settings.stac_limits))),
            registration("audit", AuditServicer(store)),
        ],
        on_stop=[runs.close],
        audit_sink=store if audited else None,
    )
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="per path, split over alternating rounds")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--database-url", default="", help="a PostgreSQL server's admin URL (default: SQLite)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # so that logging does not dominate
    work = Path(tempfile.mkdtemp(prefix="constellation-bench-audit-"))
    servers = {}
    try:
        for path in ("off", "on"):
            url = create_database(args.database_url) if args.database_url else f"sqlite:///{work / path}.db"
            servers[path] = start_core(work / path, url, audited=path == "on")
        addresses = {path: f"127.0.0.1:{server.port}" for path, server in servers.items()}
        requests = {}
        for path, address in addresses.items():
            with insecure_channel(address) as channel:
                dataset = core_pb2_grpc.CoreServiceStub(channel).CreateDataset(
                    core_pb2.CreateDatasetRequest(
                        dataset=core_pb2.Dataset(name="bench", uri="s3://scenes/a.tif", bands=["red", "nir"])
                    )
                )
            requests[path] = core_pb2.UpdateDatasetRequest(
                dataset=core_pb2.Dataset(id=dataset.id, description="updated by the bench")
            )
        print(f"audit log off/on: two cores; {args.concurrency} client threads, {args.seconds:.0f}s per path")
        print(f"{'path':<6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        samples: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(ROUNDS):
            for path, address in addresses.items():
                samples[path] += load(address, "UpdateDataset", requests[path], args.seconds / ROUNDS, args.concurrency)
        results = {path: summary(latencies, args.seconds) for path, latencies in samples.items()}
        for path, r in results.items():
            print(f"{path:<6}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
        servers["on"].stop(5)  # writes what is still queued
        with create_db_engine(servers["on"].settings.database_url).connect() as connection:
            written = connection.scalar(select(func.count()).select_from(db.AuditEventRow))
        ratio = results["on"]["rps"] / results["off"]["rps"]
        added = results["on"]["p50_ms"] - results["off"]["p50_ms"]
        verdict = "ok" if ratio >= 0.9 and added < 0.5 else "MISSES TARGET"
        calls = len(samples["on"]) + ROUNDS + 1  # and a warm-up call a round, and the dataset's creation
        print(f"on/off throughput {ratio:.2f}, p50 added {added:+.2f} ms; {written} audit records for {calls} calls")
        print(f"[{verdict}]" if written == calls else "[RECORDS MISSING]")
    finally:
        for server in servers.values():
            server.stop(0)


if __name__ == "__main__":
    os.environ.update(TEST_STORAGE_ROOTS)
    main()
