"""Offline STAC validation: stac-validator with every schema URL mapped to a local copy (no network here).

Core STAC 1.1.0 and GeoJSON schemas come from pystac's bundled copies; the extensions' schemas are kept in
tests/data/stac_schemas/<extension>/<version>/schema.json (copied from the stac-extensions repositories at the
tag of that version, Apache-2.0). A schema a document names that has no local copy fails the validation (the
validator would try the network), so a new extension needs its schema copied here first.
"""

from __future__ import annotations

import json
from pathlib import Path

from stac_validator.validate import StacValidate

SCHEMAS = Path(__file__).parent / "data" / "stac_schemas"


def schema_map() -> dict[str, str]:
    import pystac.validation

    bundled = Path(pystac.validation.__file__).parent / "jsonschemas"
    version = "1.1.0"
    spec = bundled / f"stac-spec/v{version}"
    found = {
        f"https://schemas.stacspec.org/v{version}/{part}-spec/json-schema/{path.name}": str(path)
        for part in ("item", "catalog", "collection")
        for path in spec.glob("*.json")
    }
    found.update(
        {f"https://geojson.org/schema/{n}.json": str(bundled / f"geojson/{n}.json") for n in ("Feature", "Geometry")}
    )
    for path in SCHEMAS.glob("*/*/schema.json"):
        extension, version_dir = path.parts[-3], path.parts[-2]
        found[f"https://stac-extensions.github.io/{extension}/{version_dir}/schema.json"] = str(path)
    return found


def validate(document: dict) -> dict:
    """stac-validator's report on `document` (core and every extension schema it names), offline.
    Every schema URL must have a local copy: an unmapped one is reported as a failure, not fetched."""
    mapping = schema_map()
    missing = [url for url in document.get("stac_extensions", []) if url not in mapping]
    if missing:
        return {"valid_stac": False, "error_message": f"no local copy of {missing}"}
    validator = StacValidate(schema_map=mapping)
    validator.validate_dict(document)
    (report,) = validator.message
    return report


def assert_valid(document: dict) -> dict:
    report = validate(document)
    assert report.get("valid_stac") is True, json.dumps(report, indent=1)[:3000]
    return report
