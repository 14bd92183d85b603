"""Datasets from STAC: read Items from a file, a static catalog or a STAC API search, and turn them into datasets.

Everything read here is hostile. A STAC document is read only from a data root
(file://, after `..` and links are resolved: clients.roots) or from a STAC API
whose host is in CONSTELLATION_STAC_API_HOSTS (every request, pages and links
included, is checked; redirects are refused), each document at most
`max_document_bytes`, at most `max_items` items and `timeout_s` per request.
An asset href must be file:// under a data root or s3:// in an allowed bucket;
http(s) assets are refused (the orchestrator reads file:// and s3:// only).

What a dataset says about its bands, resolution, footprint, CRS, time and cloud
cover comes from the items' metadata (eo:bands / bands common names,
raster:bands, gsd, proj:*), never from the request; the request may only pick a
subset of the bands.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from clients.roots import StorageRoots
from core_svc.domain import BandAsset, BoundingBox, Dataset, SceneItem
from mesh.errors import FieldViolation, InvalidArgument, NotFound, Unavailable, shorten
from pipeline.bands import CANONICAL_BANDS, canonical
from pipeline.rules import check_bands, check_storage_uri

MODES = ("", "per_item", "one")
DEFAULT_MAX_ITEMS = 100
SENSOR = re.compile(r"[^a-z0-9_.:-]+")
# Asset media types that are not rasters the orchestrator reads (a JPEG 2000 twin of a COG, a preview...).
RASTER_TYPES = ("image/tiff", "image/geotiff", "image/vnd.stac.geotiff", "application/x-geotiff")


@dataclass
class StacSearch:
    api_url: str = ""
    collections: list[str] = field(default_factory=list)
    bbox: list[float] = field(default_factory=list)
    intersects: str = ""
    datetime: str = ""
    max_cloud_cover: float | None = None
    filter: str = ""
    max_items: int = 0


@dataclass
class StacImport:
    """What to import (exactly one of item_uri, item_json, catalog_uri, search) and how to name it."""

    item_uri: str = ""
    item_json: str = ""
    catalog_uri: str = ""
    search: StacSearch | None = None
    mode: str = ""  # one of MODES: "" (one dataset for one item, else one per item), "per_item", "one"
    name: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    sensor: str = ""


@dataclass(frozen=True)
class StacLimits:
    api_hosts: tuple[str, ...] = ()  # "host" or "host:port", lowercase
    timeout_s: float = 30.0
    max_items: int = 1000
    max_document_bytes: int = 8 * 1024 * 1024


@dataclass
class ItemDocument:
    data: dict[str, Any]
    href: str  # where it was read: a file:// URI, an http(s) URL, or "" for inline JSON


# --------------------------------------------------------------------------- reading


class StacReader:
    """Reads item documents for a StacImport within the roots and limits."""

    def __init__(self, roots: StorageRoots, limits: StacLimits) -> None:
        self.roots = roots
        self.limits = limits

    def read(self, request: StacImport) -> tuple[list[ItemDocument], str]:
        """The items, and the URI the dataset records as its source."""
        sources = [
            bool(request.item_uri),
            bool(request.item_json),
            bool(request.catalog_uri),
            request.search is not None,
        ]
        if sum(sources) != 1:
            raise InvalidArgument.field("source", "give exactly one of item_uri, item_json, catalog_uri or search")
        if request.item_json:
            return [ItemDocument(self._parse(request.item_json, "item_json"), "")], ""
        if request.item_uri:
            uri = self._local_uri(request.item_uri, "item_uri")
            return [ItemDocument(self._parse(self._read_local(uri, "item_uri"), "item_uri"), uri)], uri
        if request.catalog_uri:
            uri = self._local_uri(request.catalog_uri, "catalog_uri")
            return self._catalog_items(uri), uri
        assert request.search is not None
        return self._search(request.search)

    def _parse(self, text: str | bytes, field_name: str) -> dict[str, Any]:
        if len(text) > self.limits.max_document_bytes:
            raise InvalidArgument.field(field_name, f"is over {self.limits.max_document_bytes} bytes")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise InvalidArgument.field(field_name, f"is not JSON: {shorten(str(error))}") from None
        if not isinstance(data, dict):
            raise InvalidArgument.field(field_name, "is not a JSON object (a STAC Item, Catalog or Collection)")
        return data

    def _local_uri(self, uri: str, field_name: str) -> str:
        if uri.startswith("/"):
            uri = Path(uri).as_uri()
        violations = check_storage_uri(uri, field_name, roots=self.roots, purpose="data")
        if violations:
            raise InvalidArgument(violations)
        if not uri.startswith("file://"):
            raise InvalidArgument.field(
                field_name, "core reads STAC JSON from file:// URIs or a STAC API; fetch an s3:// item first"
            )
        return uri

    def _read_local(self, uri: str, field_name: str) -> bytes:
        path = Path(unquote(urlsplit(uri).path))
        try:
            if not path.is_file():
                raise InvalidArgument.field(field_name, f"{shorten(uri)} is not a file")
            if path.stat().st_size > self.limits.max_document_bytes:
                raise InvalidArgument.field(
                    field_name, f"{shorten(uri)} is over {self.limits.max_document_bytes} bytes"
                )
            return path.read_bytes()
        except OSError as error:
            raise InvalidArgument.field(field_name, f"{shorten(uri)} cannot be read: {error.strerror}") from None

    def _catalog_items(self, uri: str) -> list[ItemDocument]:
        """Items under a static catalog or collection, breadth first, each link confined like the catalog."""
        queue, seen, found = [uri], set(), list[ItemDocument]()
        documents_read = 0
        while queue and len(found) < self.limits.max_items:
            current = queue.pop(0)
            if current in seen:
                continue
            seen.add(current)
            documents_read += 1
            if documents_read > 4 * self.limits.max_items + 16:
                raise InvalidArgument.field("catalog_uri", "links to too many catalogs without items")
            data = self._parse(self._read_local(current, "catalog_uri"), "catalog_uri")
            if data.get("type") == "Feature":
                found.append(ItemDocument(data, current))
                continue
            for link in data.get("links") or []:
                if not isinstance(link, dict) or link.get("rel") not in ("item", "child"):
                    continue
                target = self._local_uri(
                    _resolve_href(str(link.get("href", "")), current, "catalog_uri"), "catalog_uri"
                )
                queue.append(target)
        return found

    def _search(self, search: StacSearch) -> tuple[list[ItemDocument], str]:
        from pystac.errors import STACError, STACTypeError
        from pystac_client import Client
        from pystac_client.exceptions import APIError

        api_url = search.api_url.rstrip("/")
        check_api_host(api_url, self.limits.api_hosts, "search.api_url")
        max_items = search.max_items or DEFAULT_MAX_ITEMS
        if not 0 < max_items <= self.limits.max_items:
            raise InvalidArgument.field("search.max_items", f"must be between 1 and {self.limits.max_items}")
        parameters: dict[str, Any] = {"max_items": max_items, "limit": min(max_items, 100)}
        if search.collections:
            parameters["collections"] = list(search.collections)
        if search.bbox:
            box = list(search.bbox)
            if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[0] >= box[2] or box[1] >= box[3]:
                raise InvalidArgument.field("search.bbox", "must be [west, south, east, north] in degrees")
            parameters["bbox"] = box
        if search.intersects:
            parameters["intersects"] = self._parse(search.intersects, "search.intersects")
        if search.datetime:
            parameters["datetime"] = search.datetime
        cql = search_filter(search)
        if cql is not None:
            parameters["filter"], parameters["filter_lang"] = cql, "cql2-json"
        io = GuardedApiIO(self.limits)
        try:
            client = Client.open(api_url, stac_io=io)
            found = list(itertools.islice(client.search(**parameters).items_as_dicts(), max_items))
        except HostRefused as refused:
            raise InvalidArgument.field("search.api_url", str(refused)) from None
        except APIError as error:
            raise Unavailable(f"the STAC API at {shorten(api_url)} answered: {shorten(str(error), 300)}") from None
        except (STACError, STACTypeError, NotImplementedError) as error:  # not a STAC API, or no item search
            raise InvalidArgument.field(
                "search.api_url", f"{shorten(api_url)} is not a STAC API with item search: {shorten(str(error), 200)}"
            ) from None
        except (ValueError, TypeError) as error:  # pystac-client's checks of the parameters
            raise InvalidArgument.field("search", shorten(str(error), 300)) from None
        if search.max_cloud_cover is not None:  # again here: an API may ignore the filter
            limit = search.max_cloud_cover
            found = [d for d in found if (cover := _cloud_cover(d)) is None or cover <= limit]
        return [ItemDocument(d, _self_href(d)) for d in found], f"{api_url}/search"


def search_filter(search: StacSearch) -> dict | None:
    """The search's CQL2 filter as CQL2 JSON, with the cloud cover limit joined to it."""
    import cql2

    parts = []
    if search.filter:
        try:
            text = search.filter.strip()
            expression = cql2.parse_json(text) if text.startswith("{") else cql2.parse_text(text)
            expression.validate()
            parts.append(expression.to_json())
        except (ValueError, cql2.ValidationError, cql2.ParseError) as error:
            raise InvalidArgument.field("search.filter", f"is not CQL2: {shorten(str(error), 300)}") from None
    if search.max_cloud_cover is not None:
        limit = search.max_cloud_cover
        if not (math.isfinite(limit) and 0 <= limit <= 100):
            raise InvalidArgument.field("search.max_cloud_cover", "must be a percentage between 0 and 100")
        parts.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, limit]})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"op": "and", "args": parts}


class HostRefused(Exception):
    pass


def check_api_host(url: str, allowed: tuple[str, ...], field_name: str) -> None:
    problem = api_host_problem(url, allowed)
    if problem:
        raise InvalidArgument.field(field_name, problem)


def api_host_problem(url: str, allowed: tuple[str, ...]) -> str:
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return f"{shorten(url)} is not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return f"{shorten(url)} must be an http(s) URL of a STAC API"
    if parts.username or parts.password:
        return "must not carry credentials"
    if host in allowed or (port is not None and f"{host}:{port}" in allowed):
        return ""
    if not allowed:
        return "no STAC API host is allowed: an admin lists them in CONSTELLATION_STAC_API_HOSTS"
    return f"host {host!r} is not in CONSTELLATION_STAC_API_HOSTS ({', '.join(allowed)})"


def _guarded_io_class():
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    class _GuardedApiIO(StacApiIO):
        """pystac-client's HTTP reader, with every URL's host checked, no redirects, and bounded answers."""

        def __init__(self, limits: StacLimits) -> None:
            super().__init__(timeout=limits.timeout_s)
            self.limits = limits
            self.session.trust_env = False  # no proxy or .netrc from the service's environment

        def request(self, href, method=None, headers=None, parameters=None) -> str:
            problem = api_host_problem(href, self.limits.api_hosts)
            if problem:
                raise HostRefused(problem)
            method = (method or "GET").upper()
            body = {"json": parameters} if method == "POST" else {"params": parameters or {}}
            try:
                with self.session.request(
                    method, href, headers=headers, timeout=self.timeout, allow_redirects=False, stream=True, **body
                ) as answer:
                    if answer.is_redirect:
                        raise APIError(f"redirected to {shorten(answer.headers.get('location', ''))}; not followed")
                    content = b""
                    for chunk in answer.iter_content(64 * 1024):
                        content += chunk
                        if len(content) > self.limits.max_document_bytes:
                            raise APIError(f"answered more than {self.limits.max_document_bytes} bytes")
                    if not 200 <= answer.status_code < 300:
                        raise APIError(f"HTTP {answer.status_code}: {shorten(content.decode('utf-8', 'replace'))}")
            except APIError:
                raise
            except Exception as error:  # requests' errors: refused, timed out, bad TLS
                raise APIError(shorten(str(error), 300)) from None
            return content.decode("utf-8", "replace")

    return _GuardedApiIO


def GuardedApiIO(limits: StacLimits):  # noqa: N802 - a class made on first use, so pystac-client loads lazily
    return _guarded_io_class()(limits)


# --------------------------------------------------------------------------- items -> datasets


def _self_href(data: dict) -> str:
    for link in data.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "self" and isinstance(link.get("href"), str):
            return link["href"]
    return ""


def _cloud_cover(data: dict) -> float | None:
    value = (data.get("properties") or {}).get("eo:cloud_cover")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _resolve_href(href: str, base: str, field_name: str) -> str:
    """An href as an absolute URI: file:// and s3:// as they are, absolute paths as file://, relative ones
    against the file they were read from."""
    if not href:
        raise InvalidArgument.field(field_name, "has an empty href")
    scheme = href.split("://", 1)[0].lower() if "://" in href else ""
    if scheme in ("file", "s3"):
        return href
    if scheme in ("http", "https"):
        raise InvalidArgument.field(
            field_name,
            f"{shorten(href)} is an http(s) URL: only file:// and s3:// files can be read (copy the assets to a "
            "data root or a bucket)",
        )
    if scheme:
        raise InvalidArgument.field(field_name, f"{shorten(href)}: only file:// and s3:// hrefs are supported")
    if href.startswith("/"):
        return Path(os.path.normpath(href)).as_uri()
    if base.startswith("file://"):
        folder = Path(unquote(urlsplit(base).path)).parent
        return Path(os.path.normpath(folder / href)).as_uri()
    raise InvalidArgument.field(field_name, f"{shorten(href)} is relative, and the item has no file location")


def _asset_bands(asset: dict) -> list[tuple[int, str]]:
    """(1-based band index, canonical band name) for each band of an asset its metadata names."""
    entries = asset.get("eo:bands") or asset.get("bands") or []
    found = []
    for j, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue
        name = entry.get("common_name") or entry.get("eo:common_name") or entry.get("name") or ""
        if isinstance(name, str) and canonical(name) in CANONICAL_BANDS:
            found.append((j + 1, canonical(name)))
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _resolution(asset: dict, band_index: int, properties: dict) -> float:
    raster = asset.get("raster:bands")
    if isinstance(raster, list) and len(raster) >= band_index and isinstance(raster[band_index - 1], dict):
        found = _number(raster[band_index - 1].get("spatial_resolution"))
        if found:
            return found
    for source in (asset, properties):
        found = _number(source.get("gsd"))
        if found:
            return found
        transform = source.get("proj:transform")
        if isinstance(transform, list) and transform:
            found = _number(abs(transform[0]) if isinstance(transform[0], int | float) else None)
            if found:
                return found
    return 0.0


def _crs(properties: dict, assets: dict) -> str:
    for source in (properties, *[a for a in assets.values() if isinstance(a, dict)]):
        code = source.get("proj:code")
        if isinstance(code, str) and code:
            return code[:64]
        epsg = source.get("proj:epsg")
        if isinstance(epsg, int) and not isinstance(epsg, bool):
            return f"EPSG:{epsg}"
    return ""


def _time(properties: dict, where: str) -> datetime:
    from pystac.utils import str_to_datetime

    value = properties.get("datetime") or properties.get("start_datetime")
    if not isinstance(value, str):
        raise InvalidArgument.field(f"{where}.properties.datetime", "is missing (nor is start_datetime given)")
    try:
        return str_to_datetime(value)
    except (ValueError, OverflowError):
        raise InvalidArgument.field(
            f"{where}.properties.datetime", f"{shorten(value)} is not an RFC 3339 time"
        ) from None


def _bbox(data: dict, where: str) -> BoundingBox | None:
    box = data.get("bbox")
    if box is None:
        return None
    if not isinstance(box, list) or len(box) not in (4, 6) or not all(isinstance(v, int | float) for v in box):
        raise InvalidArgument.field(f"{where}.bbox", "must be 4 (or 6) numbers")
    west, south, east, north = (box[0], box[1], box[2], box[3]) if len(box) == 4 else (box[0], box[1], box[3], box[4])
    if not all(math.isfinite(v) for v in (west, south, east, north)) or west >= east or south >= north:
        raise InvalidArgument.field(f"{where}.bbox", "must have west < east and south < north (no antimeridian span)")
    return BoundingBox(float(west), float(south), float(east), float(north), "EPSG:4326")


def scene_from_item(document: ItemDocument, where: str, roots: StorageRoots) -> SceneItem:
    """One item's scene, with one BandAsset per band its metadata names (the first asset of each band)."""
    data = document.data
    if data.get("type") != "Feature" or not isinstance(data.get("id"), str) or not data["id"]:
        raise InvalidArgument.field(where, "is not a STAC Item (a GeoJSON Feature with an id)")
    properties: dict = data["properties"] if isinstance(data.get("properties"), dict) else {}
    assets: dict = data["assets"] if isinstance(data.get("assets"), dict) else {}
    cloud = properties.get("eo:cloud_cover")
    if cloud is not None and not (isinstance(cloud, int | float) and 0 <= cloud <= 100):
        raise InvalidArgument.field(f"{where}.properties.eo:cloud_cover", "must be a percentage between 0 and 100")
    base = document.href
    band_assets: dict[str, BandAsset] = {}
    for key, asset in assets.items():
        if not isinstance(asset, dict):
            continue
        roles = asset.get("roles") or ["data"]
        media = str(asset.get("type") or "image/tiff").lower()
        if "data" not in roles or not media.startswith(RASTER_TYPES):
            continue
        bands = [b for b in _asset_bands(asset) if b[1] not in band_assets]
        if not bands:
            continue
        field_name = f"{where}.assets.{key}.href"
        uri = _resolve_href(str(asset.get("href") or ""), base, field_name)
        violations = check_storage_uri(uri, field_name, roots=roots, purpose="data")
        if violations:
            raise InvalidArgument(violations)
        for index, band in bands:
            band_assets[band] = BandAsset(band, uri, index, _resolution(asset, index, properties), str(key)[:128])
    if not band_assets:
        raise InvalidArgument.field(
            where,
            f"item {shorten(data['id'])!r} has no data asset that says which band it holds: each band's asset needs "
            "eo:bands with a common_name (or STAC 1.1 bands with eo:common_name)",
        )
    href = base or _self_href(data)
    return SceneItem(
        id=data["id"][:256],
        acquired_time=_time(properties, where),
        cloud_cover=float(cloud) if cloud is not None else None,
        bbox=_bbox(data, where),
        crs=_crs(properties, assets),
        assets=list(band_assets.values()),
        stac_href=href if href.startswith(("file://", "http://", "https://")) else "",
        collection=str(data.get("collection") or "")[:256],
    )


def _sensor(request: StacImport, data: dict) -> str:
    properties = data.get("properties") or {}
    raw = request.sensor or properties.get("platform") or properties.get("constellation") or ""
    return SENSOR.sub("-", str(raw).lower()).strip("-")[:64]


def _pick(scene: SceneItem, bands: list[str]) -> SceneItem:
    by_band = {a.band: a for a in scene.assets}
    scene.assets = [by_band[b] for b in bands]
    return scene


def _finest(scenes: list[SceneItem]) -> float:
    resolutions = [a.resolution_m for s in scenes for a in s.assets if a.resolution_m > 0]
    return min(resolutions) if resolutions else 0.0


def _union(scenes: list[SceneItem]) -> BoundingBox | None:
    boxes = [s.bbox for s in scenes if s.bbox is not None]
    if not boxes:
        return None
    return BoundingBox(
        min(b.min_x for b in boxes),
        min(b.min_y for b in boxes),
        max(b.max_x for b in boxes),
        max(b.max_y for b in boxes),
    )


def datasets_from_items(
    request: StacImport, documents: list[ItemDocument], source_uri: str, roots: StorageRoots
) -> list[Dataset]:
    """The datasets an import creates: one per item, or one holding them all (request.mode)."""
    if request.mode not in MODES:
        raise InvalidArgument.field("mode", f"must be one of {', '.join(m or 'unspecified' for m in MODES)}")
    violations = check_bands(list(request.bands), "bands", required=False)
    if violations:
        raise InvalidArgument(violations)
    if not documents:
        raise NotFound("no STAC item matched: widen the search (dates, area, cloud cover, filter)")
    scenes = [scene_from_item(d, f"items[{i}]", roots) for i, d in enumerate(documents)]
    wanted = [canonical(b) for b in request.bands]
    for i, scene in enumerate(scenes):
        have = [a.band for a in scene.assets]
        lacking = [b for b in wanted if b not in have]
        if lacking:
            raise InvalidArgument(
                FieldViolation(
                    "bands",
                    f"item {scene.id!r} (items[{i}]) has no band {', '.join(lacking)}; it has {', '.join(have)}",
                )
            )
    one = request.mode == "one" or (request.mode == "" and len(scenes) == 1)
    if one:
        first = [a.band for a in scenes[0].assets]
        bands = wanted or [b for b in first if all(any(a.band == b for a in s.assets) for s in scenes)]
        if not bands:
            raise InvalidArgument.field("mode", "the items share no band; import one dataset per item")
        scenes = [_pick(s, bands) for s in scenes]
        name = request.name or (scenes[0].id if len(scenes) == 1 else scenes[0].collection or scenes[0].id)
        description = request.description or (
            f"STAC item {scenes[0].id}" if len(scenes) == 1 else f"{len(scenes)} STAC items from {source_uri}"
        )
        uri = source_uri if len(scenes) > 1 or source_uri else scenes[0].stac_href
        return [
            Dataset(
                name=name,
                description=description,
                uri=uri,
                sensor=_sensor(request, documents[0].data),
                bands=bands,
                resolution_m=_finest(scenes),
                bbox=_union(scenes),
                tags=list(request.tags),
                items=scenes,
            )
        ]
    datasets = []
    for document, scene in zip(documents, scenes, strict=True):
        bands = wanted or [a.band for a in scene.assets]
        scene = _pick(scene, bands)
        datasets.append(
            Dataset(
                name=f"{request.name}-{scene.id}" if request.name else scene.id,
                description=request.description or f"STAC item {scene.id}",
                uri=scene.stac_href,
                sensor=_sensor(request, document.data),
                bands=bands,
                resolution_m=_finest([scene]),
                bbox=scene.bbox,
                tags=list(request.tags),
                items=[scene],
            )
        )
    return datasets
