"""Field checks for catalog resources. Each returns every violation found, with paths
relative to the resource ("bands[2]"), so a client can mark every bad field at once."""

from __future__ import annotations

import math
import re
from urllib.parse import urlparse

from clients.roots import StorageRoots
from core_svc.domain import MODEL_TASKS, Dataset, Model
from mesh.errors import FieldViolation, shorten
from model_runtime import manifest
from model_runtime.manifest import DATATYPES, VERSION, check_output_name
from model_runtime.manifest import NAME as MODEL_NAME
from pipeline.bands import match_bands
from pipeline.rules import check_bands, check_storage_uri

TAG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
MAX_NAME = 128
MAX_DESCRIPTION = 10_000


def _check_name(name: str) -> list[FieldViolation]:
    if not name.strip():
        return [FieldViolation("name", "is required")]
    if len(name) > MAX_NAME:
        return [FieldViolation("name", f"is {len(name)} characters; at most {MAX_NAME}")]
    if name != name.strip():
        return [FieldViolation("name", "must not start or end with whitespace")]
    return []


def _check_tags(tags: list[str]) -> list[FieldViolation]:
    return [
        FieldViolation(f"tags[{i}]", f"{tag!r} is not a tag: lowercase letters, digits and _.:- , at most 64")
        for i, tag in enumerate(tags)
        if not TAG.match(tag)
    ]


def validate_dataset(dataset: Dataset, roots: StorageRoots) -> list[FieldViolation]:
    found = _check_name(dataset.name)
    if len(dataset.description) > MAX_DESCRIPTION:
        found.append(FieldViolation("description", f"at most {MAX_DESCRIPTION} characters"))
    if not dataset.items:
        found += check_storage_uri(dataset.uri, "uri", roots=roots, purpose="data")
    elif dataset.uri.startswith(("file:", "s3:")):  # where the STAC came from; an API's URL is only recorded
        found += check_storage_uri(dataset.uri, "uri", roots=roots, purpose="data")
    found += check_bands(dataset.bands, "bands", required=True)
    found += _check_items(dataset, roots)
    if not math.isfinite(dataset.resolution_m) or dataset.resolution_m < 0:
        found.append(FieldViolation("resolution_m", "must be a positive number of metres per pixel (0 if unknown)"))
    if dataset.sensor and not TAG.match(dataset.sensor):
        found.append(
            FieldViolation("sensor", f"{dataset.sensor!r}: use a lowercase name such as sentinel-2 or landsat-7")
        )
    box = dataset.bbox
    if box is not None:
        values = (box.min_x, box.min_y, box.max_x, box.max_y)
        if not all(math.isfinite(v) for v in values):
            found.append(FieldViolation("bbox", "coordinates must be finite numbers"))
        elif box.min_x >= box.max_x or box.min_y >= box.max_y:
            found.append(FieldViolation("bbox", "min_x must be below max_x and min_y below max_y"))
        elif box.crs in ("", "EPSG:4326") and not (
            -180 <= box.min_x and box.max_x <= 180 and -90 <= box.min_y and box.max_y <= 90
        ):
            found.append(
                FieldViolation("bbox", "EPSG:4326 longitudes must lie in [-180, 180] and latitudes in [-90, 90]")
            )
    found += _check_tags(dataset.tags)
    return found


def _check_items(dataset: Dataset, roots: StorageRoots) -> list[FieldViolation]:
    """Every file an item names lies under the roots, and every item has a file for each of the dataset's bands."""
    found = []
    for i, item in enumerate(dataset.items):
        for j, asset in enumerate(item.assets):
            found += check_storage_uri(asset.uri, f"items[{i}].assets[{j}].uri", roots=roots, purpose="data")
        if item.uri:
            found += check_storage_uri(item.uri, f"items[{i}].uri", roots=roots, purpose="data")
        elif not item.assets:
            found.append(FieldViolation(f"items[{i}]", f"item {item.id!r} names no file"))
        if item.assets:
            have = [a.band for a in item.assets]
            lacking = [b for b in dataset.bands if not match_bands([b], have, near=False).complete]
            if lacking:
                found.append(
                    FieldViolation(f"items[{i}]", f"item {item.id!r} has no file for band(s) {', '.join(lacking)}")
                )
    return found


def check_model_source(source: str) -> list[FieldViolation]:
    if not source:
        return [FieldViolation("source", "is required: a model folder, a git repository URL or hf://org/name@revision")]
    try:
        parsed = urlparse(source)
    except ValueError:  # e.g. an unclosed IPv6 bracket: "https://[host/repo.git"
        return [FieldViolation("source", f"{shorten(source)!r} is not a folder path or URL")]
    if source.startswith("/") or parsed.scheme == "file":
        return check_storage_uri(source if parsed.scheme else f"file://{source}", "source")
    if parsed.scheme in ("https", "http", "ssh", "git") and parsed.netloc:
        return []
    if parsed.scheme == "hf" and parsed.netloc and parsed.path.strip("/"):
        return []
    return [FieldViolation("source", f"{source!r}: give an absolute folder path, a git URL or hf://org/name@revision")]


def check_requirement(text: str, field: str) -> list[FieldViolation]:
    """The same policy hosting applies when it packages the model."""
    return [FieldViolation(p.field, p.description) for p in manifest.check_requirement(text, field)]


def validate_model(model: Model) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if not MODEL_NAME.match(model.name):
        found.append(
            FieldViolation(
                "name",
                f"{model.name!r}: lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 64",
            )
        )
    if not VERSION.match(model.version):
        found.append(FieldViolation("version", f"{model.version!r}: a version such as 1.0.0 is required"))
    if model.task not in MODEL_TASKS:
        found.append(FieldViolation("task", f"is required: one of {', '.join(MODEL_TASKS)}"))
    found += check_model_source(model.source)
    found += check_bands(model.input.bands, "input.bands", required=True)
    if model.input.tile_size_px < 0 or model.input.tile_size_px > 8192:
        found.append(FieldViolation("input.tile_size_px", "must be between 0 (any size) and 8192"))
    if model.input.dtype not in DATATYPES:
        found.append(FieldViolation("input.dtype", f"{model.input.dtype!r}: one of {', '.join(sorted(DATATYPES))}"))
    if model.input.value_min > model.input.value_max:
        found.append(FieldViolation("input.value_min", "must not exceed input.value_max"))
    if not model.outputs:
        found.append(FieldViolation("outputs", "name at least one output tensor"))
    names: set[str] = set()
    for i, output in enumerate(model.outputs):
        name_problem = check_output_name(output.name)
        if name_problem:
            found.append(FieldViolation(f"outputs[{i}].name", name_problem))
        elif output.name in names:
            found.append(FieldViolation(f"outputs[{i}].name", f"{output.name!r} is used twice"))
        names.add(output.name)
        if output.dtype not in DATATYPES:
            found.append(
                FieldViolation(f"outputs[{i}].dtype", f"{output.dtype!r}: one of {', '.join(sorted(DATATYPES))}")
            )
        if any(d < -1 or d == 0 for d in output.shape):
            found.append(FieldViolation(f"outputs[{i}].shape", "dimensions are positive, or -1 for variable"))
    for name in ("description", "data_used"):
        if len(getattr(model.card, name)) > MAX_DESCRIPTION:
            found.append(FieldViolation(f"card.{name}", f"at most {MAX_DESCRIPTION} characters"))
    for i, dependency in enumerate(model.card.dependencies):
        found += check_requirement(dependency, f"card.dependencies[{i}]")
    found += _check_tags(model.tags)
    return found
