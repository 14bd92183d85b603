"""Datasets through CoreService on a real server, against SQLite and PostgreSQL alike."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2
from mesh.errors import field_violations
from tests.conftest import rpc_error


def dataset(name: str = "olinda", **overrides) -> core_pb2.Dataset:
    fields = {
        "name": name,
        "description": "Landsat 7 ETM+ over Olinda",
        "uri": "file:///data/L7_ETMs.tif",
        "sensor": "landsat-7",
        "bands": ["blue", "green", "red", "nir", "swir1", "swir2"],
        "resolution_m": 28.5,
        "bbox": common_pb2.BoundingBox(min_x=-34.96, min_y=-8.1, max_x=-34.83, max_y=-7.98, crs="EPSG:4326"),
        "tags": ["coast", "water"],
    }
    fields.update(overrides)
    return core_pb2.Dataset(**fields)


def create(core, **kwargs) -> core_pb2.Dataset:
    return core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=dataset(**kwargs)))


def test_create_get_list_delete_round_trip(core):
    created = create(core)
    assert created.id.startswith("ds_")
    assert created.create_time.seconds > 0 and created.create_time == created.update_time

    fetched = core.GetDataset(core_pb2.GetDatasetRequest(id=created.id))
    assert fetched == created
    assert list(fetched.bands) == ["blue", "green", "red", "nir", "swir1", "swir2"]
    assert fetched.bbox.min_x == pytest.approx(-34.96)

    listed = core.ListDatasets(core_pb2.ListDatasetsRequest())
    assert [d.id for d in listed.datasets] == [created.id]
    assert listed.next_page_token == ""

    core.DeleteDataset(core_pb2.DeleteDatasetRequest(id=created.id))
    assert rpc_error(core.GetDataset, core_pb2.GetDatasetRequest(id=created.id)).code() == grpc.StatusCode.NOT_FOUND
    assert core.ListDatasets(core_pb2.ListDatasetsRequest()).datasets == []


def test_duplicate_name_is_already_exists_and_keeps_the_first(core):
    first = create(core)
    error = rpc_error(create, core, uri="s3://other-bucket/scene.tif")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "olinda" in error.details()
    assert core.GetDataset(core_pb2.GetDatasetRequest(id=first.id)).uri == "file:///data/L7_ETMs.tif"


def test_missing_and_empty_ids(core):
    assert rpc_error(core.GetDataset, core_pb2.GetDatasetRequest(id="ds_nope")).code() == grpc.StatusCode.NOT_FOUND
    assert (
        rpc_error(core.DeleteDataset, core_pb2.DeleteDatasetRequest(id="ds_nope")).code() == grpc.StatusCode.NOT_FOUND
    )
    error = rpc_error(core.GetDataset, core_pb2.GetDatasetRequest(id=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["id"]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"name": ""}, "dataset.name", "required"),
        ({"name": "x" * 129}, "dataset.name", "at most 128"),
        ({"uri": ""}, "dataset.uri", "required"),
        ({"uri": "http://example.org/scene.tif"}, "dataset.uri", "file:// or s3://"),
        ({"uri": "file://relative/scene.tif"}, "dataset.uri", "absolute path"),
        ({"uri": "s3://Bad_Bucket/key.tif"}, "dataset.uri", "bucket"),
        ({"uri": "s3://bucket"}, "dataset.uri", "object key"),
        # urllib raises ValueError on an unclosed IPv6 bracket, which was INTERNAL (found by fuzzing)
        ({"uri": "s3://[bucket/key.tif"}, "dataset.uri", "bucket"),
        ({"uri": "file://[::1/scene.tif"}, "dataset.uri", "absolute path"),
        ({"bands": []}, "dataset.bands", "required"),
        ({"bands": ["green", "infrared"]}, "dataset.bands[1]", "unknown band 'infrared'"),
        ({"bands": ["green", "green"]}, "dataset.bands[1]", "twice"),
        ({"resolution_m": -10.0}, "dataset.resolution_m", "positive"),
        (
            {"bbox": common_pb2.BoundingBox(min_x=10, min_y=0, max_x=5, max_y=1)},
            "dataset.bbox",
            "min_x must be below max_x",
        ),
        ({"bbox": common_pb2.BoundingBox(min_x=0, min_y=0, max_x=200, max_y=1)}, "dataset.bbox", "[-180, 180]"),
        ({"tags": ["Has Space"]}, "dataset.tags[0]", "not a tag"),
    ],
)
def test_invalid_dataset_names_the_field_and_stores_nothing(core, overrides, field, words):
    error = rpc_error(create, core, **overrides)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert field in [v.field for v in violations], violations
    assert words in next(v.description for v in violations if v.field == field)
    assert error.details().startswith(field)
    assert core.ListDatasets(core_pb2.ListDatasetsRequest()).datasets == []


def test_every_violation_is_reported_at_once(core):
    error = rpc_error(create, core, name="", uri="ftp://x", bands=["bogus"])
    assert {v.field for v in field_violations(error)} == {"dataset.name", "dataset.uri", "dataset.bands[0]"}
    assert "and 2 more problems" in error.details()


def test_paging_walks_every_dataset_once_in_creation_order(core):
    ids = [create(core, name=f"scene-{i}").id for i in range(7)]
    seen, token, pages = [], "", 0
    while True:
        page = core.ListDatasets(core_pb2.ListDatasetsRequest(page_size=3, page_token=token))
        seen += [d.id for d in page.datasets]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids and pages == 3


def test_bad_page_tokens_and_sizes(core):
    create(core, name="a")
    create(core, name="b")
    token = core.ListDatasets(core_pb2.ListDatasetsRequest(page_size=1)).next_page_token
    assert token
    other_filter = core_pb2.ListDatasetsRequest(page_size=1, page_token=token, filter='sensor = "landsat-7"')
    error = rpc_error(core.ListDatasets, other_filter)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "different filter" in error.details()
    garbage = rpc_error(core.ListDatasets, core_pb2.ListDatasetsRequest(page_token="not-a-token"))
    assert [v.field for v in field_violations(garbage)] == ["page_token"]
    negative = rpc_error(core.ListDatasets, core_pb2.ListDatasetsRequest(page_size=-1))
    assert [v.field for v in field_violations(negative)] == ["page_size"]


def test_filters_by_sensor_tag_and_band(core):
    landsat = create(core, name="landsat", tags=["water_body"])
    sentinel = create(core, name="s2", sensor="sentinel-2", bands=["green", "nir"], tags=["waterbody"])
    sar = create(core, name="sar", sensor="sentinel-1", bands=["vv", "vh"], tags=[])

    def names(text: str) -> list[str]:
        return [d.name for d in core.ListDatasets(core_pb2.ListDatasetsRequest(filter=text)).datasets]

    assert names('sensor = "sentinel-2"') == ["s2"]
    assert names('sensor = "SENTINEL-2"') == ["s2"]
    # "_" is a literal in tag filters, not a LIKE wildcard.
    assert names('tag = "water_body"') == ["landsat"]
    assert names('band = "nir"') == ["landsat", "s2"]
    assert names('band = "nir" AND sensor = "landsat-7"') == ["landsat"]
    assert names('band = "vv"') == ["sar"]
    assert {landsat.id, sentinel.id, sar.id}
    for bad in ['colour = "red"', "sensor = sentinel-2", 'sensor = "a" OR sensor = "b"']:
        error = rpc_error(core.ListDatasets, core_pb2.ListDatasetsRequest(filter=bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(error)] == ["filter"]


def test_update_changes_only_masked_fields(core):
    created = create(core)
    patch = core_pb2.Dataset(id=created.id, description="new words", uri="s3://scenes/olinda.tif", sensor="ignored")
    updated = core.UpdateDataset(
        core_pb2.UpdateDatasetRequest(dataset=patch, update_mask=FieldMask(paths=["description", "uri"]))
    )
    assert updated.description == "new words" and updated.uri == "s3://scenes/olinda.tif"
    assert updated.sensor == "landsat-7" and list(updated.bands) == list(created.bands)
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() > created.update_time.ToDatetime()
    assert core.GetDataset(core_pb2.GetDatasetRequest(id=created.id)) == updated


def test_update_without_mask_changes_the_fields_that_are_set(core):
    created = create(core)
    updated = core.UpdateDataset(core_pb2.UpdateDatasetRequest(dataset=core_pb2.Dataset(id=created.id, tags=["flood"])))
    assert list(updated.tags) == ["flood"] and updated.name == created.name and updated.uri == created.uri


def test_update_rejects_bad_masks_values_and_name_clashes(core):
    created = create(core)
    create(core, name="taken")

    def update(patch: core_pb2.Dataset, paths: list[str]) -> grpc.RpcError:
        return rpc_error(
            core.UpdateDataset, core_pb2.UpdateDatasetRequest(dataset=patch, update_mask=FieldMask(paths=paths))
        )

    unknown = update(core_pb2.Dataset(id=created.id), ["create_time"])
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(unknown)] == ["update_mask"]
    bad_value = update(core_pb2.Dataset(id=created.id, bands=["nope"]), ["bands"])
    assert [v.field for v in field_violations(bad_value)] == ["dataset.bands[0]"]
    clash = update(core_pb2.Dataset(id=created.id, name="taken"), ["name"])
    assert clash.code() == grpc.StatusCode.ALREADY_EXISTS
    missing = update(core_pb2.Dataset(id="ds_missing", name="x"), ["name"])
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert core.GetDataset(core_pb2.GetDatasetRequest(id=created.id)) == created
