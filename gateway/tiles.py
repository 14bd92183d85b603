"""The map's tile server: XYZ tiles (WebMercatorQuad), a point query and a COG's bounds at `/tiles/`, from
titiler-core's TilerFactory over rio-tiler, run by the gateway supervisor beside the console server.

It reads the same files the console may show and no others: a `file://` URL must resolve (`..` and symlinks
followed) to a regular file inside the outputs folder `/files/` serves or inside one of the mesh's data roots
(CONSTELLATION_DATA_ROOTS, where datasets lie, so the input scene can be drawn under its results); an `s3://`
URL must name a bucket in CONSTELLATION_S3_BUCKETS. Anything else is the 404 `/files/` answers, whether or not
it exists. Unless authentication is off it wants one of the mesh's keys, in the console's cookie (map tiles are
<img>-like requests that cannot send headers) or in `x-api-key`, and refuses as `/files/` does (401).

Routes (all under `/tiles`, each with `?url=file:///…` or `?url=s3://bucket/key`):
  /tiles/tiles/WebMercatorQuad/{z}/{x}/{y}.png   a 256² tile; rendering options: bidx (repeatable), rescale
                                                 ("min,max", one per band), colormap_name, colormap, nodata,
                                                 tilesize (at most CONSTELLATION_TILES_MAX_SIZE_PX)
  /tiles/point/{lon},{lat}                       the value of every band under a WGS84 point
  /tiles/info, /tiles/info.geojson               the COG's metadata; its footprint in WGS84 (zoom to extent)
  /tiles/geojson                                 a GeoJSON output (a run's polygons) moved to WGS84

It listens on a Unix socket in a private folder (0700, the socket 0600): only Envoy, running as the same user,
reaches it, so it needs no TLS even when the mesh has certificates.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Annotated

import rasterio.errors
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import PlainTextResponse, Response
from rio_tiler.errors import PointOutsideBounds
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
from titiler.core.factory import TilerFactory

from clients.roots import StorageRoots
from clients.storage import Storage, StorageError, parse
from gateway import console
from gateway.settings import GatewaySettings, TileSettings

log = logging.getLogger("gateway.tiles")

SOCKET_NAME = "tiles.sock"
# The routes of TilerFactory the map uses; the others (statistics, tilejson, WMTS…) are dropped.
KEPT_ROUTES = (
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}",
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
    "/point/{lon},{lat}",
    "/info",
    "/info.geojson",
)


class Refused(Exception):
    """A request the tile server answers as `/files/` would: 401 without a key, 404 outside the roots."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(body.decode().strip())
        self.status, self.body = status, body


def not_found() -> Refused:
    return Refused(404, b"not found\n")


def no_key() -> Refused:
    return Refused(401, b"an API key is required: set it in the console\n")


def confined_path(url: str, readable: tuple[Path, ...], buckets: frozenset[str], storage: Storage) -> str:
    """The path GDAL opens for `url`, or raises not_found() when the console may not show it: a file:// URL must
    resolve to a regular file inside one of `readable` (console._inside, the check /files/ makes), an s3:// URL
    must name one of `buckets` (or `*`) with no '.' or '..' segment."""
    try:
        location = parse(url)
    except StorageError:
        raise not_found() from None
    if location.scheme == "s3":
        if {".", ".."} & set(location.path.split("/")) or not ({"*", location.bucket} & buckets):
            raise not_found()
        return storage.gdal_path(url)
    for root in readable:
        try:
            relative = Path(os.path.realpath(location.path)).relative_to(root.resolve())
        except (OSError, RuntimeError, ValueError):  # outside root, or not a path at all
            continue
        found = console._inside(root, str(relative))
        if found is not None:
            return str(found)
    raise not_found()


def build_app(
    keys: set[str] | frozenset[str],
    readable: tuple[Path, ...],
    buckets: frozenset[str] = frozenset(),
    storage: Storage | None = None,
    settings: TileSettings | None = None,
) -> FastAPI:
    """The tile server's ASGI app: tiles of COGs inside `readable` (or in `buckets`), for callers presenting one of
    `keys` (none: authentication is off)."""
    settings = settings or TileSettings.from_env()
    storage = storage or Storage(settings.s3_endpoint_url)
    keys = frozenset(keys)

    def checked(request: Request) -> None:
        """The caller's key, and a tile size titiler may allocate."""
        tilesize = request.query_params.get("tilesize", "")
        if tilesize and (not tilesize.isdigit() or not 0 < int(tilesize) <= settings.max_size_px):
            raise Refused(400, f"tilesize must be 1 to {settings.max_size_px} pixels\n".encode())
        if not keys:
            return
        presented = request.headers.get("x-api-key", "")
        if not presented:
            presented = urllib.parse.unquote(request.cookies.get(console.KEY_COOKIE, ""))
        if not any(hmac.compare_digest(presented.encode(), key.encode()) for key in keys):
            raise no_key()

    def dataset_path(url: Annotated[str, Query(description="file:// or s3:// URL of a COG", max_length=4096)]) -> str:
        return confined_path(url, readable, buckets, storage)

    def gdal_environment(url: Annotated[str, Query(max_length=4096)]) -> dict:
        return storage.gdal_options(url) if url.startswith("s3://") else {}

    factory = TilerFactory(
        path_dependency=dataset_path,
        environment_dependency=gdal_environment,
        add_preview=False,
        add_part=False,
        add_viewer=False,
        router_prefix="/tiles",
    )
    factory.router.routes = [r for r in factory.router.routes if getattr(r, "path", "") in KEPT_ROUTES]
    app = FastAPI(title="Constellation tiles", openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(factory.router, prefix="/tiles", dependencies=[Depends(checked)])
    # titiler's own mapping (bad band or expression: 400, a tile outside the COG: 404); anything else is a 500
    # whose message stays in the log.
    add_exception_handlers(app, {k: v for k, v in DEFAULT_STATUS_CODES.items() if v != 500} | {PointOutsideBounds: 404})

    @app.get("/tiles/geojson", dependencies=[Depends(checked)])
    def geojson(path: str = Depends(dataset_path)) -> Response:  # noqa: B008 - FastAPI's dependency idiom
        """A run's GeoJSON output in WGS84 (RFC 7946), whatever CRS it was written in, for the map's vector layer."""
        if path.startswith("/vsis3/"):
            raise not_found()
        if Path(path).stat().st_size > settings.max_geojson_mb * 1024 * 1024:
            raise Refused(413, f"the GeoJSON is larger than {settings.max_geojson_mb} MiB\n".encode())
        return Response(_in_wgs84(Path(path).read_bytes()), media_type="application/geo+json")

    @app.exception_handler(Refused)
    def refused(_request: Request, error: Refused) -> PlainTextResponse:
        return PlainTextResponse(error.body.decode(), status_code=error.status, headers={"Cache-Control": "no-store"})

    @app.middleware("http")
    async def headers(request: Request, call_next):
        try:
            response = await call_next(request)
        except IndexError:  # rio-tiler's answer to a band index past the file's last band
            response = PlainTextResponse("a band index (bidx) is beyond the file's bands\n", status_code=400)
        except Exception as error:  # noqa: BLE001 - the message stays in the log, never in the answer
            log.error("tile request %s failed: %s", request.url.path, error)
            response = PlainTextResponse("the tile server could not read this file\n", status_code=500)
        response.headers.setdefault("Cache-Control", f"private, max-age={settings.cache_max_age_s}")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return app


def _in_wgs84(text: bytes) -> bytes:
    """A FeatureCollection with its geometries moved from its `crs` member's CRS (if any) to EPSG:4326."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    try:
        collection = json.loads(text)
        name = collection.get("crs", {}).get("properties", {}).get("name", "")
        source = CRS.from_user_input(name.replace("urn:ogc:def:crs:", "").replace("::", ":")) if name else None
    except (ValueError, AttributeError, rasterio.errors.CRSError):
        raise Refused(400, b"not a GeoJSON FeatureCollection with a CRS this server knows\n") from None
    if source is not None and source.to_epsg() != 4326:
        for feature in collection.get("features", []):
            if feature.get("geometry"):
                feature["geometry"] = transform_geom(source, "EPSG:4326", feature["geometry"])
        collection.pop("crs")
    return json.dumps(collection).encode()


class TileServer:
    """uvicorn serving `app` on a Unix socket in a fresh private folder, in a daemon thread."""

    def __init__(self, app: FastAPI, threads: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="constellation-tiles-"))  # 0700
        self.socket_path = self.folder / SOCKET_NAME
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        listener.listen(128)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", limit_concurrency=256)
        self.server = uvicorn.Server(config)
        self._listener = listener
        self._threads = threads
        self.thread = threading.Thread(target=self._run, name="tiles", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from anyio import to_thread

        async def serve() -> None:
            # rio-tiler's reads are blocking; FastAPI runs them on anyio's thread pool, sized here.
            to_thread.current_default_thread_limiter().total_tokens = self._threads
            await self.server.serve(sockets=[self._listener])

        asyncio.run(serve())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.socket_path.unlink(missing_ok=True)
        self.folder.rmdir()


def serve_settings(settings: GatewaySettings, tile_settings: TileSettings | None = None) -> TileServer:
    """The tile server for the gateway `settings`: the console's keys, its outputs folder and the mesh's data
    roots and buckets."""
    tile_settings = tile_settings or TileSettings.from_env()
    roots = StorageRoots.from_env()
    readable = (settings.outputs_dir, *roots.data_roots)
    app = build_app(settings.api_keys, readable, roots.s3_buckets, settings=tile_settings)
    return TileServer(app, tile_settings.threads)
