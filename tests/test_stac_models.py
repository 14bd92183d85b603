"""Models to and from STAC Items with the Machine Learning Model (MLM) extension: `constellation models
export-stac` / `import-stac` and core's ImportModelFromStac."""

from __future__ import annotations

import copy
import json

import grpc
import pytest
from click.testing import CliRunner

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2
from constellation_sdk import cli
from mesh.errors import field_violations
from pipeline import mlm
from tests.catalog_data import ndwi_model, register
from tests.conftest import rpc_error
from tests.stac_schemas import assert_valid

SPEC_FIELDS = ("name", "version", "task", "source", "card", "input", "outputs", "tags")


def spec_of(model: core_pb2.Model) -> core_pb2.Model:
    """What the catalog was told about a model, without what it added (id, state, times, owner)."""
    return core_pb2.Model(**{name: getattr(model, name) for name in SPEC_FIELDS})


def test_export_then_import_gives_the_same_model(core, core_server, monkeypatch, tmp_path):
    monkeypatch.setenv("CONSTELLATION_GATEWAY", f"127.0.0.1:{core_server.port}")
    registered = register(core)
    item_path = tmp_path / "ndwi-water.json"
    exported = CliRunner().invoke(cli.main, ["models", "export-stac", "ndwi-water:1.0.0", "-o", str(item_path)])
    assert exported.exit_code == 0, exported.output
    item = json.loads(item_path.read_text())
    assert_valid(item)  # STAC 1.1.0 + MLM 1.4.0 + eo 1.1.0 schemas, offline
    props = item["properties"]
    assert props["mlm:name"] == "ndwi-water" and props["mlm:tasks"] == ["semantic-segmentation"]
    assert props["mlm:input"][0]["bands"] == ["green", "nir"]
    assert props["mlm:input"][0]["input"]["shape"] == [-1, 2, 256, 256]
    assert props["mlm:input"][0]["value_scaling"] == [{"type": "clip", "minimum": 0.0, "maximum": 1.0}]
    assert props["mlm:output"][0]["result"]["shape"] == [-1, 1, 256, 256]
    assert item["assets"]["model"]["href"] == registered.source
    assert "mlm:model" in item["assets"]["model"]["roles"]

    core.DeleteModel(core_pb2.DeleteModelRequest(id=registered.id))
    imported = CliRunner().invoke(cli.main, ["models", "import-stac", str(item_path), "--json"])
    assert imported.exit_code == 0, imported.output
    (model,) = core.ListModels(core_pb2.ListModelsRequest(filter='name = "ndwi-water"')).models
    assert spec_of(model) == spec_of(registered)


def test_band_names_match_case_insensitively_and_a_free_tile_size_survives():
    model = ndwi_model(input=common_pb2.ModelInputSpec(bands=["green", "nir08"], tile_size_px=0, dtype="UINT16"))
    item = mlm.model_item(model)
    assert_valid(item)
    item["properties"]["mlm:input"][0]["bands"] = ["GREEN", {"name": "nir08"}]
    back = mlm.model_from_item(json.dumps(item))
    assert list(back.input.bands) == ["green", "nir08"]
    assert back.input.tile_size_px == 0 and back.input.dtype == "UINT16"
    assert (back.input.value_min, back.input.value_max) == (0.0, 0.0)


def test_a_sources_credentials_are_not_exported():
    item = mlm.model_item(ndwi_model(source="https://bot:s3cret@git.example.org:8443/m.git#main"))
    assert item["assets"]["model"]["href"] == "https://git.example.org:8443/m.git#main"
    assert "s3cret" not in json.dumps(item)


def _edited(change) -> str:
    item = copy.deepcopy(mlm.model_item(ndwi_model(name="edited")))
    change(item)
    return json.dumps(item)


def _second_input(item):
    item["properties"]["mlm:input"].append(item["properties"]["mlm:input"][0])


def _channels_last(item):
    item["properties"]["mlm:input"][0]["input"]["dim_order"] = ["batch", "height", "width", "bands"]


def _z_score(item):
    item["properties"]["mlm:input"][0]["value_scaling"] = [{"type": "z-score", "mean": 0.1, "stddev": 0.2}]


def _generative(item):
    item["properties"]["mlm:tasks"] = ["generative"]


def _no_model_asset(item):
    item["assets"]["model"]["roles"] = ["metadata"]


def _unknown_band(item):
    item["properties"]["mlm:input"][0]["bands"] = ["green", "ultraviolet"]
    item["properties"]["mlm:input"][0]["input"]["shape"] = [-1, 2, 256, 256]


def _complex_output(item):
    item["properties"]["mlm:output"][0]["result"]["data_type"] = "cfloat64"


def _not_mlm(item):
    item["stac_extensions"] = []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_second_input, "properties.mlm:input"),
        (_channels_last, "properties.mlm:input[0].input.dim_order"),
        (_z_score, "properties.mlm:input[0].value_scaling"),
        (_generative, "properties.mlm:tasks"),
        (_no_model_asset, "assets"),
        (_unknown_band, "properties.mlm:input[0].bands[1]"),
        (_complex_output, "properties.mlm:output[0].result.data_type"),
        (_not_mlm, "stac_extensions"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_what_the_catalog_cannot_hold_is_refused_naming_the_field(core, change, field):
    error = rpc_error(core.ImportModelFromStac, core_pb2.ImportModelFromStacRequest(item_json=_edited(change)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field in [v.field for v in field_violations(error)], error.details()
    assert core.ListModels(core_pb2.ListModelsRequest()).models == []


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"type": "Collection"}', "{" * 20_000])
def test_what_is_not_an_item_is_refused(core, text):
    error = rpc_error(core.ImportModelFromStac, core_pb2.ImportModelFromStacRequest(item_json=text))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


def test_the_imported_model_is_checked_like_a_registered_one(core):
    """The item's source goes through RegisterModel's checks: a relative folder is refused."""
    text = json.dumps(mlm.model_item(ndwi_model(source="relative/folder")))
    error = rpc_error(core.ImportModelFromStac, core_pb2.ImportModelFromStacRequest(item_json=text))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model.source" in [v.field for v in field_violations(error)]
