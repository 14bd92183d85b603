"""ImportStacDatasets: datasets from a STAC Item, a static collection and a real STAC API search, with bands,
resolution, footprint, CRS, time and cloud cover from the items' metadata, and hostile input refused."""

from __future__ import annotations

import json
import threading
from concurrent import futures

import grpc
import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from sqlalchemy import text

from clients.roots import StorageRoots
from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import core_pb2, core_pb2_grpc
from constellation.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from constellation_sdk import cli
from core_svc.catalog import Catalog
from core_svc.db import MIGRATIONS, migrate
from core_svc.server import build as build_core
from mesh import config
from mesh.db import create_db_engine
from mesh.errors import field_violations
from tests import stac_items
from tests.conftest import TEST_STORAGE_ROOTS, key_channel, service_env
from tests.pg import free_port


@pytest.fixture(scope="module")
def items_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stac-items")
    stac_items.make_items(folder)
    return folder


@pytest.fixture
def stac_core(database_url: str, tmp_path, request):
    api = request.getfixturevalue("stac_api") if "stac_api" in request.fixturenames else None
    hosts = f"127.0.0.1:{api.port}" if api else ""
    env = service_env(tmp_path, DATABASE_URL=database_url, CONSTELLATION_STAC_API_HOSTS=hosts, **TEST_STORAGE_ROOTS)
    server = build_core(config.load("core", env), env)
    server.start()
    channel = key_channel(f"127.0.0.1:{server.port}")
    yield core_pb2_grpc.CoreServiceStub(channel)
    channel.close()
    server.stop(0)


def item_uri(folder, day) -> str:
    identifier = stac_items.item_id(day)
    return (folder / identifier / f"{identifier}.json").as_uri()


def refused(call) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details(), [v.field for v in field_violations(caught.value)]


def test_one_item_becomes_a_dataset_described_by_its_metadata(stac_core, items_dir):
    day = stac_items.DEFAULT_DATES[1]
    answer = stac_core.ImportStacDatasets(core_pb2.ImportStacDatasetsRequest(item_uri=item_uri(items_dir, day)))
    (dataset,) = answer.datasets
    assert dataset.name == stac_items.item_id(day)
    assert list(dataset.bands) == ["blue", "green", "red", "nir", "swir16", "swir22"]
    assert dataset.sensor == "landsat-7"
    assert dataset.resolution_m == pytest.approx(28.5)
    assert -34.92 < dataset.bbox.min_x < dataset.bbox.max_x < -34.82
    (item,) = dataset.items
    assert item.acquired_time.ToDatetime().date() == day
    assert item.cloud_cover == pytest.approx(5.0, abs=0.5)
    assert item.crs == "EPSG:31985"
    assert item.collection == stac_items.COLLECTION
    by_band = {a.band: a for a in item.assets}
    assert by_band["swir16"].asset_key == "B5" and by_band["swir16"].resolution_m == pytest.approx(57.0)
    assert by_band["nir"].uri == (items_dir / item.id / "B4.tif").as_uri() and by_band["nir"].band_index == 1
    again = stac_core.GetDataset(core_pb2.GetDatasetRequest(id=dataset.id))  # stored, not only answered
    assert again.items == dataset.items
    for alias in ("swir1", "SWIR16"):  # a band filter finds the band under any of its names
        listed = stac_core.ListDatasets(core_pb2.ListDatasetsRequest(filter=f'band = "{alias}"'))
        assert [d.id for d in listed.datasets] == [dataset.id]
    assert not stac_core.ListDatasets(core_pb2.ListDatasetsRequest(filter='band = "lwir11"')).datasets


def test_static_collection_becomes_one_time_series_dataset_with_chosen_bands(stac_core, items_dir):
    answer = stac_core.ImportStacDatasets(
        core_pb2.ImportStacDatasetsRequest(
            catalog_uri=(items_dir / "collection.json").as_uri(),
            mode=core_pb2.STAC_IMPORT_MODE_ONE_DATASET,
            name="olinda-series",
            bands=["green", "swir1"],  # an alias of swir16
        )
    )
    (dataset,) = answer.datasets
    assert dataset.name == "olinda-series" and list(dataset.bands) == ["green", "swir16"]
    assert sorted(i.id for i in dataset.items) == [stac_items.item_id(d) for d in stac_items.DEFAULT_DATES]
    assert all([a.band for a in i.assets] == ["green", "swir16"] for i in dataset.items)


def test_stac_api_search_with_dates_and_cloud_limit_makes_one_dataset_per_item(stac_api, stac_core):
    search = core_pb2.StacSearch(
        api_url=stac_api.url, collections=[stac_api.collection], datetime="2024-06-01T00:00:00Z/2024-06-30T23:59:59Z"
    )
    answer = stac_core.ImportStacDatasets(
        core_pb2.ImportStacDatasetsRequest(search=search, mode=core_pb2.STAC_IMPORT_MODE_DATASET_PER_ITEM, name="june")
    )
    assert sorted(d.name for d in answer.datasets) == ["june-L7_OLINDA_20240603", "june-L7_OLINDA_20240619"]
    search.max_cloud_cover = 10
    clear = stac_core.ImportStacDatasets(core_pb2.ImportStacDatasetsRequest(search=search, name="clear-june"))
    assert [d.items[0].id for d in clear.datasets] == ["L7_OLINDA_20240619"]
    assert clear.datasets[0].uri == "" or clear.datasets[0].items[0].stac_href.startswith(stac_api.url)


def test_stac_api_search_with_a_cql2_filter(stac_api, stac_core):
    search = core_pb2.StacSearch(
        api_url=stac_api.url, collections=[stac_api.collection], filter="eo:cloud_cover < 1", max_items=5
    )
    answer = stac_core.ImportStacDatasets(core_pb2.ImportStacDatasetsRequest(search=search, name="cloudless"))
    assert [d.items[0].id for d in answer.datasets] == ["L7_OLINDA_20240705"]
    search.filter = "eo:cloud_cover <<< 1"
    code, _, fields = refused(lambda: stac_core.ImportStacDatasets(core_pb2.ImportStacDatasetsRequest(search=search)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["search.filter"]


def test_stac_api_host_must_be_allowed(stac_core):
    search = core_pb2.StacSearch(api_url="http://169.254.169.254/latest", collections=["x"])
    code, details, fields = refused(
        lambda: stac_core.ImportStacDatasets(core_pb2.ImportStacDatasetsRequest(search=search))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["search.api_url"]
    assert "CONSTELLATION_STAC_API_HOSTS" in details


def test_hostile_items_are_refused_with_the_field_named(stac_core, items_dir, tmp_path):
    path = items_dir / stac_items.item_id(stac_items.DEFAULT_DATES[0])
    document = json.loads((path / f"{path.name}.json").read_text())

    def import_json(data):
        return refused(
            lambda: stac_core.ImportStacDatasets(core_pb2.ImportStacDatasetsRequest(item_json=json.dumps(data)))
        )

    outside = json.loads(json.dumps(document))
    outside["assets"]["B4"]["href"] = "file:///etc/passwd"
    code, _, fields = import_json(outside)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["items[0].assets.B4.href"]

    remote = json.loads(json.dumps(document))
    remote["assets"]["B1"]["href"] = "https://example.com/B1.tif"
    code, details, fields = import_json(remote)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "only file:// and s3://" in details

    unnamed = json.loads(json.dumps(document))
    for asset in unnamed["assets"].values():
        asset.pop("eo:bands")
    code, details, fields = import_json(unnamed)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["items[0]"] and "common_name" in details

    code, _, fields = refused(
        lambda: stac_core.ImportStacDatasets(core_pb2.ImportStacDatasetsRequest(item_uri="file:///etc/passwd"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["item_uri"]

    code, _, fields = refused(lambda: stac_core.ImportStacDatasets(core_pb2.ImportStacDatasetsRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["source"]

    code, _, _ = refused(
        lambda: stac_core.CreateDataset(
            core_pb2.CreateDatasetRequest(
                dataset=core_pb2.Dataset(
                    name="forged", uri=(path / "B1.tif").as_uri(), bands=["blue"], items=[{"id": "x"}]
                )
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_name_taken_refuses_the_whole_import(stac_core, items_dir):
    request = core_pb2.ImportStacDatasetsRequest(catalog_uri=(items_dir / "collection.json").as_uri(), name="olinda")
    assert len(stac_core.ImportStacDatasets(request).datasets) == 3
    code, _, _ = refused(lambda: stac_core.ImportStacDatasets(request))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    listed = stac_core.ListDatasets(core_pb2.ListDatasetsRequest(page_size=50))
    assert len(listed.datasets) == 3


def test_cli_imports_a_static_collection_and_a_search(stac_api, tmp_path, monkeypatch, database_url):

    env = service_env(
        tmp_path,
        DATABASE_URL=database_url,
        CONSTELLATION_STAC_API_HOSTS=f"127.0.0.1:{stac_api.port}",
        **TEST_STORAGE_ROOTS,
    )
    server = build_core(config.load("core", env), env)
    server.start()
    try:
        monkeypatch.setenv("CONSTELLATION_GATEWAY", f"127.0.0.1:{server.port}")
        series = CliRunner().invoke(
            cli.main,
            ["datasets", "import-stac", "--catalog", str(stac_api.folder / "collection.json"), "--one-dataset",
             "--name", "olinda-cli", "--band", "green", "--band", "nir", "--json"],
        )  # fmt: skip
        assert series.exit_code == 0, series.output
        (dataset,) = json.loads(series.output)["datasets"]
        assert dataset["bands"] == ["green", "nir"] and len(dataset["items"]) == 3
        search = CliRunner().invoke(
            cli.main,
            ["datasets", "import-stac", "--api", stac_api.url, "--collection", stac_api.collection,
             "--datetime", "2024-06-01T00:00:00Z/2024-06-30T23:59:59Z", "--max-cloud", "10",
             "--name", "cli", "--per-item"],
        )  # fmt: skip
        assert search.exit_code == 0, search.output
        assert "cli-L7_OLINDA_20240619" in search.output and "1 item(s)" in search.output
        both = CliRunner().invoke(cli.main, ["datasets", "import-stac", "--item", "x.json", "--api", stac_api.url])
        assert both.exit_code == 2 and "exactly one of" in both.output
    finally:
        server.stop(0)


def test_datasets_from_before_items_migrate_to_none(database_url):
    """A catalog made by the previous schema (revision 0004) gets an empty items list for its datasets."""
    engine = create_db_engine(database_url)
    alembic = Config()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, "0004")
        connection.execute(
            text(
                "INSERT INTO datasets (id, name, description, uri, sensor, bands, resolution_m, tags, bands_index, "
                "tags_index, create_time, update_time, owner) VALUES ('ds_old', 'old-scene', '', "
                "'file:///data/old.tif', 'landsat-7', '[\"red\"]', 30.0, '[]', ',red,', ',', :now, :now, '')"
            ),
            {"now": "2025-01-01 00:00:00+00:00"},
        )
    migrate(engine)
    old = Catalog(engine, StorageRoots.from_env(TEST_STORAGE_ROOTS)).get_dataset("ds_old")
    assert old.items == [] and old.bands == ["red"]
    engine.dispose()


def test_launch_carries_the_items_to_the_orchestrator(items_dir, tmp_path):
    """Core resolves a STAC dataset's items into ResolvedDataset.items (a recording orchestrator stands in)."""
    launched: list[orchestrator_pb2.LaunchRunRequest] = []
    seen = threading.Event()

    class Recording(orchestrator_pb2_grpc.OrchestratorServiceServicer):
        def LaunchRun(self, request, context):
            launched.append(request)
            seen.set()
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "recorded; not run")

    port = free_port()
    orchestrator = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(Recording(), orchestrator)
    orchestrator.add_insecure_port(f"127.0.0.1:{port}")
    orchestrator.start()
    env = service_env(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'core.db'}",
        CONSTELLATION_ORCHESTRATOR_ADDR=f"127.0.0.1:{port}",
        **TEST_STORAGE_ROOTS,
    )
    server = build_core(config.load("core", env), env)
    server.start()
    channel = key_channel(f"127.0.0.1:{server.port}")
    try:
        core = core_pb2_grpc.CoreServiceStub(channel)
        (dataset,) = core.ImportStacDatasets(
            core_pb2.ImportStacDatasetsRequest(
                catalog_uri=(items_dir / "collection.json").as_uri(), mode=core_pb2.STAC_IMPORT_MODE_ONE_DATASET
            )
        ).datasets
        spec = c.PipelineSpec(
            blocks=[
                c.Block(id="scene", dataset=c.DatasetBlock(dataset_id=dataset.id)),
                c.Block(id="ndwi", index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI)),
                c.Block(id="out", export=c.ExportBlock(uri=(tmp_path / "out").as_uri())),
            ],
            edges=[
                c.Edge(source_block_id="scene", target_block_id="ndwi"),
                c.Edge(source_block_id="ndwi", target_block_id="out"),
            ],
        )
        pipeline = core.CreatePipeline(
            core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="stac-ndwi", spec=spec))
        )
        core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        assert seen.wait(30), "core never launched the run"
        resolved = launched[0].datasets[dataset.id]
        assert list(resolved.bands) == list(dataset.bands) and resolved.uri == dataset.uri
        assert list(resolved.items) == list(dataset.items) and len(resolved.items) == 3
    finally:
        channel.close()
        server.stop(0)
        orchestrator.stop(0)
