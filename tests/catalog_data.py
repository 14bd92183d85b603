"""Catalog entries tests build on."""

from __future__ import annotations

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2

LANDSAT_BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]


def ndwi_model(**overrides) -> core_pb2.Model:
    fields = {
        "name": "ndwi-water",
        "version": "1.0.0",
        "task": common_pb2.MODEL_TASK_SEGMENTATION,
        "source": "/srv/models/ndwi-water",
        "card": common_pb2.ModelCard(
            description="Surface water from green and NIR (NDWI > 0).",
            data_used="none: a band ratio",
            dependencies=["numpy>=1.26"],
            metrics={"heldout_iou": 0.93},
            license="Apache-2.0",
        ),
        "input": common_pb2.ModelInputSpec(
            bands=["green", "nir"], tile_size_px=256, dtype="FP32", value_min=0, value_max=1
        ),
        "outputs": [common_pb2.ModelOutputSpec(name="water_probability", dtype="FP32", shape=[1, 256, 256])],
        "tags": ["water"],
    }
    fields.update(overrides)
    return core_pb2.Model(**fields)


def register(core, **overrides) -> core_pb2.Model:
    return core.RegisterModel(core_pb2.RegisterModelRequest(model=ndwi_model(**overrides)))


def add_dataset(core, name: str = "olinda", bands: list[str] | None = None) -> core_pb2.Dataset:
    return core.CreateDataset(
        core_pb2.CreateDatasetRequest(
            dataset=core_pb2.Dataset(
                name=name,
                uri="file:///data/L7_ETMs.tif",
                sensor="landsat-7",
                bands=bands or LANDSAT_BANDS,
                resolution_m=28.5,
            )
        )
    )


def water_spec(dataset_id: str, model_id: str, export_uri: str = "file:///tmp/out") -> common_pb2.PipelineSpec:
    """dataset -> tile -> model -> stitch -> vectorize -> export (raster and vectors)."""
    return common_pb2.PipelineSpec(
        blocks=[
            common_pb2.Block(
                id="scene", dataset=common_pb2.DatasetBlock(dataset_id=dataset_id, bands=["green", "nir"])
            ),
            common_pb2.Block(
                id="tiles",
                tile=common_pb2.TileBlock(
                    tile_size_px=256, overlap_px=16, normalization=common_pb2.NORMALIZATION_REFLECTANCE
                ),
            ),
            common_pb2.Block(id="water", model=common_pb2.ModelBlock(model_id=model_id, batch_size=8)),
            common_pb2.Block(id="mosaic", stitch=common_pb2.StitchBlock(blend=common_pb2.BLEND_MODE_MEAN)),
            common_pb2.Block(
                id="polygons", vectorize=common_pb2.VectorizeBlock(threshold=0.5, simplify_tolerance_m=15)
            ),
            common_pb2.Block(id="out", export=common_pb2.ExportBlock(uri=export_uri)),
        ],
        edges=[
            common_pb2.Edge(source_block_id="scene", target_block_id="tiles"),
            common_pb2.Edge(source_block_id="tiles", target_block_id="water"),
            common_pb2.Edge(source_block_id="water", target_block_id="mosaic"),
            common_pb2.Edge(source_block_id="mosaic", target_block_id="polygons"),
            common_pb2.Edge(source_block_id="mosaic", target_block_id="out"),
            common_pb2.Edge(source_block_id="polygons", target_block_id="out"),
        ],
    )
