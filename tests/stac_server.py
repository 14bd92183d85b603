"""A real STAC API for tests: stac-fastapi-pgstac on PostgreSQL with PostGIS, bound to 127.0.0.1 on a free port.

    server = StacServer(admin_url, folder).start()   # migrates pgstac, loads the test items, starts uvicorn
    server.url                                       # "http://127.0.0.1:PORT"
    server.stop()

The database is a fresh one on the test run's PostgreSQL (tests/pg.py);
`pypgstac migrate` installs pgstac (and PostGIS) into it, and pypgstac's
Loader loads the collection and items made by tests/stac_items.py. The API
runs as a child process (uvicorn), so the suite's gRPC servers and this
HTTP server never share an event loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tests import stac_items
from tests.pg import create_database, free_port


class StacServer:
    def __init__(self, admin_url: str, folder: Path) -> None:
        self.admin_url = admin_url
        self.folder = Path(folder)
        self.port = free_port()
        self.items: list = []
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def collection(self) -> str:
        return stac_items.COLLECTION

    def start(self) -> StacServer:
        dsn = create_database(self.admin_url)
        with_postgis(dsn)
        subprocess.run(
            [sys.executable, "-m", "pypgstac.pypgstac", "migrate", "--dsn", dsn],
            check=True,
            capture_output=True,
            timeout=300,
        )
        self.items = stac_items.make_items(self.folder)
        load(dsn, self.folder / "collection.json", self.items)
        parts = urlsplit(dsn)
        env = {
            **os.environ,
            "PGUSER": parts.username or "postgres",
            "PGPASSWORD": parts.password or "unused",
            "PGHOST": parts.hostname or "127.0.0.1",
            "PGPORT": str(parts.port or 5432),
            "PGDATABASE": parts.path.lstrip("/"),
            "POSTGRES_USER": parts.username or "postgres",
            "POSTGRES_PASS": parts.password or "unused",
            "POSTGRES_HOST_READER": parts.hostname or "127.0.0.1",
            "POSTGRES_HOST_WRITER": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_DBNAME": parts.path.lstrip("/"),
            "ENABLED_EXTENSIONS": "query,sort,fields,filter,free_text,pagination,collection_search",
            "STAC_FASTAPI_TITLE": "Constellation test STAC API",
        }
        log = open(self.folder / "stac-api.log", "wb")  # noqa: SIM115 - the child writes to it until stop()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "stac_fastapi.pgstac.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the STAC API exited: {(self.folder / 'stac-api.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/collections/{self.collection}", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the STAC API did not answer in {timeout_s:.0f} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


def with_postgis(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS postgis")


def load(dsn: str, collection_path: Path, items: list) -> None:
    """The collection and its items into pgstac, with pypgstac's Loader."""
    import json

    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    collection = json.loads(collection_path.read_text())
    collection["links"] = [link for link in collection["links"] if link["rel"] not in {"item", "self", "root"}]
    with PgstacDB(dsn=dsn) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([collection]), insert_mode=Methods.upsert)
        loader.load_items(iter([item.to_dict(transform_hrefs=False) for item in items]), insert_mode=Methods.upsert)
