"""What checking an API key costs per call: the key check alone, and core's ListDatasets end to end.

    .venv/bin/python bench/auth_check.py [--seconds 3]

Starts core in this process (SQLite, log level WARNING) with one admin key in CONSTELLATION_API_KEYS and a user
with a key in its database, then measures, `seconds` each:

- the check alone (mesh.auth.Authenticator.authenticate): a key from the settings, a user key in core's database
  (one SELECT, core's own path), a user key through RemoteKeys as hosting, the orchestrator and the agent check
  it, with the cache warm and with no cache (one Authenticate call to core per check);
- ListDatasets (an empty page) over a real channel, direct to core: a core without keys (the baseline, auth
  off), a key from the settings, a user key; with the per-call ratios against the baseline.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

from constellation.core.v1 import core_pb2, core_pb2_grpc
from core_svc.accounts import Accounts
from core_svc.db import migrate
from core_svc.server import build as build_core
from mesh import config
from mesh.auth import Authenticator, RemoteKeys
from mesh.db import create_db_engine
from mesh.identity import ANONYMOUS_ADMIN
from mesh.services import insecure_channel
from tests.conftest import TEST_STORAGE_ROOTS
from tests.pg import free_port

ADMIN_KEY = "bench-admin-key"
ROUNDS = 3


def per_call_samples(call: Callable[[], object], seconds: float) -> list[float]:
    """Microseconds per call, for `seconds`."""
    samples = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def per_call_us(call: Callable[[], object], seconds: float) -> tuple[float, float]:
    """p50 and mean, microseconds."""
    samples = per_call_samples(call, seconds)
    return statistics.median(samples), statistics.fmean(samples)


def core_env(home: Path, keys: str) -> dict[str, str]:
    return {
        **TEST_STORAGE_ROOTS,
        "CONSTELLATION_HOME": str(home),
        "DATABASE_URL": f"sqlite:///{home / 'core.db'}",
        "CONSTELLATION_API_KEYS": keys,
        "CONSTELLATION_CORE_PORT": "0",
        "CONSTELLATION_CORE_METRICS_PORT": "0",
        "CONSTELLATION_HOSTING_ADDR": f"127.0.0.1:{free_port()}",
        "CONSTELLATION_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    seconds = parser.parse_args().seconds
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        secured_home, open_home = Path(tmp) / "secured", Path(tmp) / "open"
        engine = create_db_engine(f"sqlite:///{secured_home / 'core.db'}")
        migrate(engine)
        accounts = Accounts(engine)
        user = accounts.create_user("bench", "viewer")
        admin = config.load("core", core_env(secured_home, ADMIN_KEY))
        _, user_key = accounts.create_key(ANONYMOUS_ADMIN, user.id, 0, "bench")
        secured = build_core(admin)
        baseline = build_core(config.load("core", core_env(open_home, "")))
        secured.start(), baseline.start()
        try:
            address = f"127.0.0.1:{secured.port}"
            checks = {
                "settings key": Authenticator(admin.api_keys, admin.service_key).authenticate,
                "user key, core's database": Authenticator(
                    {ADMIN_KEY: "admin"}, "", accounts.authenticate
                ).authenticate,
                "user key, RemoteKeys, cache warm": RemoteKeys(
                    grpc.insecure_channel(address), admin.service_key, ttl_s=3600
                ),
                "user key, RemoteKeys, no cache": RemoteKeys(
                    grpc.insecure_channel(address), admin.service_key, ttl_s=0
                ),
            }
            print("key check alone (p50 / mean, µs):")
            for name, check in checks.items():
                key = ADMIN_KEY if name == "settings key" else user_key
                p50, mean = per_call_us(lambda check=check, key=key: check(key), seconds)
                print(f"  {name:<34} {p50:9.1f} / {mean:9.1f}")
            print("ListDatasets direct to core (p50 / mean, µs; ratio of p50 to auth off):")
            stubs = {
                "auth off (baseline)": (baseline.port, ""),
                "settings key": (secured.port, ADMIN_KEY),
                "user key": (secured.port, user_key),
            }
            channels = {name: insecure_channel(f"127.0.0.1:{port}") for name, (port, _) in stubs.items()}
            samples: dict[str, list[float]] = {name: [] for name in stubs}
            for _ in range(ROUNDS):  # alternate, so machine noise hits every path alike
                for name, (_, key) in stubs.items():
                    stub = core_pb2_grpc.CoreServiceStub(channels[name])
                    metadata = (("authorization", f"Bearer {key}"),) if key else ()
                    request = core_pb2.ListDatasetsRequest(page_size=1)
                    stub.ListDatasets(request, metadata=metadata)
                    samples[name] += per_call_samples(
                        lambda s=stub, m=metadata, r=request: s.ListDatasets(r, metadata=m), seconds / ROUNDS
                    )
            base_p50 = statistics.median(samples["auth off (baseline)"])
            for name, taken in samples.items():
                p50, mean = statistics.median(taken), statistics.fmean(taken)
                print(f"  {name:<34} {p50:9.1f} / {mean:9.1f}   x{p50 / base_p50:.2f}  ({p50 - base_p50:+.0f} µs)")
            for channel in channels.values():
                channel.close()
        finally:
            secured.stop(0), baseline.stop(0)


if __name__ == "__main__":
    main()
