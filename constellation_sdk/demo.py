"""`make demo`: start the mesh on embedded defaults and walk the catalog through the gateway.

Registers a sample scene and the NDWI water model, builds the water-mapping
pipeline, validates it, and lists what the catalog holds, all through Envoy
with the SDK. Running it again reuses what is already registered. (Deploying
the model and running the pipeline join this flow as the hosting,
orchestrator and end-to-end issues land.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2
from constellation_sdk import Client, mesh_process

ROOT = Path(__file__).resolve().parent.parent
SCENE_URI = f"file://{ROOT / 'examples' / 'data' / 'L7_ETMs.tif'}"


def ensure(create, find):  # type: ignore[no-untyped-def]
    """Create, or fetch the existing entry when the name is taken."""
    try:
        return create()
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        return find()


def main() -> int:
    state = mesh_process.read_state(mesh_process.MeshPaths(mesh_process.config.home_dir()))
    if not state or not mesh_process.status():
        print(f"starting the mesh on embedded defaults (SQLite in {mesh_process.config.home_dir()})...")
        state = mesh_process.up()
    gateway = state["processes"]["gateway"]["address"]
    print(f"gateway: {gateway}")
    with Client(gateway) as client:
        client.wait_ready()
        core = client.core
        dataset = ensure(
            lambda: core.CreateDataset(
                core_pb2.CreateDatasetRequest(
                    dataset=core_pb2.Dataset(
                        name="olinda-landsat7",
                        description="Landsat 7 ETM+ over Olinda, Brazil: coast, ocean and rivers",
                        uri=SCENE_URI,
                        sensor="landsat-7",
                        bands=["blue", "green", "red", "nir", "swir1", "swir2"],
                        resolution_m=28.5,
                        tags=["coast", "water", "sample"],
                    )
                )
            ),
            lambda: core.ListDatasets(core_pb2.ListDatasetsRequest(filter='name = "olinda-landsat7"')).datasets[0],
        )
        model = ensure(
            lambda: core.RegisterModel(
                core_pb2.RegisterModelRequest(
                    model=core_pb2.Model(
                        name="ndwi-water",
                        version="1.0.0",
                        task=common_pb2.MODEL_TASK_SEGMENTATION,
                        source=str(ROOT / "examples" / "models" / "ndwi-water"),
                        card=common_pb2.ModelCard(description="Surface water from green and NIR (NDWI)", dependencies=["numpy"]),
                        input=common_pb2.ModelInputSpec(bands=["green", "nir"], tile_size_px=256, dtype="FP32", value_min=0, value_max=1),
                        outputs=[common_pb2.ModelOutputSpec(name="water_probability", dtype="FP32", shape=[1, 256, 256])],
                        tags=["water"],
                    )
                )
            ),
            lambda: core.ListModels(core_pb2.ListModelsRequest(filter='name = "ndwi-water" AND version = "1.0.0"')).models[0],
        )
        out = f"file://{mesh_process.config.home_dir() / 'outputs'}"
        spec = common_pb2.PipelineSpec(
            blocks=[
                common_pb2.Block(id="scene", label="Olinda scene", dataset=common_pb2.DatasetBlock(dataset_id=dataset.id, bands=["green", "nir"])),
                common_pb2.Block(id="tiles", tile=common_pb2.TileBlock(tile_size_px=256, overlap_px=16, normalization=common_pb2.NORMALIZATION_REFLECTANCE)),
                common_pb2.Block(id="water", model=common_pb2.ModelBlock(model_id=model.id, batch_size=8)),
                common_pb2.Block(id="mosaic", stitch=common_pb2.StitchBlock(blend=common_pb2.BLEND_MODE_MEAN)),
                common_pb2.Block(id="polygons", vectorize=common_pb2.VectorizeBlock(threshold=0.5, simplify_tolerance_m=30)),
                common_pb2.Block(id="export", export=common_pb2.ExportBlock(uri=out)),
            ],
            edges=[
                common_pb2.Edge(source_block_id=s, target_block_id=t)
                for s, t in [("scene", "tiles"), ("tiles", "water"), ("water", "mosaic"), ("mosaic", "polygons"), ("mosaic", "export"), ("polygons", "export")]
            ],
        )
        check = core.ValidatePipeline(core_pb2.ValidatePipelineRequest(spec=spec))
        if not check.valid:
            for problem in check.problems:
                print(f"  invalid: {problem.field}: {problem.description}", file=sys.stderr)
            return 1
        pipeline = ensure(
            lambda: core.CreatePipeline(core_pb2.CreatePipelineRequest(pipeline=core_pb2.Pipeline(name="olinda-water", spec=spec))),
            lambda: core.ListPipelines(core_pb2.ListPipelinesRequest(filter='name = "olinda-water"')).pipelines[0],
        )
        print(f"dataset   {dataset.id}  {dataset.name} ({dataset.sensor}, {len(dataset.bands)} bands, {dataset.resolution_m} m)")
        print(f"model     {model.id}  {model.name}:{model.version} reads {', '.join(model.input.bands)}")
        print(f"pipeline  {pipeline.id}  {pipeline.name}: {' -> '.join(check.topological_order)}")
        counts = (
            len(core.ListDatasets(core_pb2.ListDatasetsRequest()).datasets),
            len(core.ListModels(core_pb2.ListModelsRequest()).models),
            len(core.ListPipelines(core_pb2.ListPipelinesRequest()).pipelines),
        )
        print(f"catalog: {counts[0]} dataset(s), {counts[1]} model(s), {counts[2]} pipeline(s)")
    print(f"\nopen: http://{gateway}/   (the web console)")
    print(f"try:  .venv/bin/grpcurl -plaintext {gateway} list")
    print("stop: make down")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CONSTELLATION_LOG_FORMAT", "json")
    sys.exit(main())
