"""The band-name and storage-URI rules, shared by catalog resources and pipeline specs.

Each check returns every violation found, with paths relative to what it was
given ("bands[2]"), so a client can mark every bad field at once.
"""

from __future__ import annotations

import re

from clients.roots import Purpose, StorageRoots
from clients.storage import StorageError, parse
from mesh.errors import FieldViolation
from pipeline.bands import KNOWN_BANDS, canonical

S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_storage_uri(
    uri: str,
    field: str,
    *,
    object_key_required: bool = True,
    roots: StorageRoots | None = None,
    purpose: Purpose = "data",
) -> list[FieldViolation]:
    """`file:///absolute/path` or `s3://bucket/key`, as clients.storage reads them; with `roots`, also under an
    allowed root for `purpose` (a dataset's scene or an export destination). Without `roots` only the form is
    checked: every service that stores or uses a URI passes its roots."""
    if not uri:
        return [FieldViolation(field, "is required: give a file:///absolute/path or s3://bucket/key URI")]
    try:
        location = parse(uri)
    except StorageError:
        scheme = uri.partition(":")[0].lower()
        if scheme == "file":
            return [
                FieldViolation(field, f"{uri!r} is not a file URI with an absolute path, e.g. file:///data/scene.tif")
            ]
        if scheme == "s3":
            return [FieldViolation(field, f"{uri!r} does not name a valid S3 bucket")]
        return [FieldViolation(field, f"{uri!r} must start with file:// or s3://")]
    if location.scheme == "s3":
        if not S3_BUCKET.match(location.bucket):
            return [FieldViolation(field, f"{uri!r} does not name a valid S3 bucket")]
        if object_key_required and not location.path.strip("/"):
            return [FieldViolation(field, f"{uri!r} names a bucket but no object key")]
    refusal = roots.refusal(uri, purpose) if roots is not None else None
    return [FieldViolation(field, f"{uri!r} {refusal}")] if refusal else []


def check_bands(bands: list[str], field: str, *, required: bool) -> list[FieldViolation]:
    """Known band names (STAC common names or their aliases, pipeline.bands), no band twice under any name."""
    if required and not bands:
        return [FieldViolation(field, 'is required: list the band names in file order, e.g. ["green", "nir"]')]
    found = []
    seen: set[str] = set()
    for i, band in enumerate(bands):
        if band not in KNOWN_BANDS:
            known = ", ".join(sorted(KNOWN_BANDS))
            found.append(FieldViolation(f"{field}[{i}]", f"unknown band {band!r}; known bands: {known}"))
        elif canonical(band) in seen:
            found.append(FieldViolation(f"{field}[{i}]", f"band {band!r} is listed twice (or under another name)"))
        seen.add(canonical(band))
    return found
