"""Turning a chosen dataset and model into a pipeline spec, with a reason for every block.

dataset -> tile -> model -> stitch -> (vectorize) -> export. Settings follow
from the entries: the tile block cuts the model's tile size, normalises the way
the model's input range and the sensor call for, and overlaps tiles for
per-pixel tasks (blended by averaging) but not for per-tile ones.
"""

from __future__ import annotations

import re

from agent_svc.domain import BlockReason, Dataset, Intent, Model, scenes_in_range
from constellation.common.v1 import common_pb2
from pipeline.bands import match_bands

REFLECTANCE_SENSORS = ("sentinel-2", "landsat")
PER_PIXEL_TASKS = ("segmentation", "regression")


def export_uri(base: str, dataset: Dataset, model: Model) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", f"{dataset.name}-{model.name}".lower()).strip("-") or "plan"
    return f"{base.rstrip('/')}/{slug}"


def _normalization(dataset: Dataset, model: Model, sar: bool) -> tuple[common_pb2.Normalization.ValueType, str]:
    unit_range = model.value_max and 0 <= model.value_min and model.value_max <= 1
    if sar:
        return common_pb2.NORMALIZATION_Z_SCORE, "radar backscatter has no fixed range, so each band is standardised"
    if unit_range and dataset.sensor.startswith(REFLECTANCE_SENSORS):
        return (
            common_pb2.NORMALIZATION_REFLECTANCE,
            f"{dataset.sensor} digital numbers / 10000 give reflectance in [0, 1], the range {model.name} expects",
        )
    if unit_range:
        return (
            common_pb2.NORMALIZATION_MIN_MAX,
            f"scaled to [0, 1] by the scene's range, the range {model.name} expects",
        )
    return common_pb2.NORMALIZATION_NONE, f"{model.name} takes values as stored"


def scene_note(dataset: Dataset, intent: Intent) -> str:
    """What the rationale says of a STAC dataset's scenes: the one(s) in the asked dates, and their clouds."""
    scenes = scenes_in_range(dataset, intent.constraints)
    if not scenes:
        return ""
    shown = sorted(scenes, key=lambda s: (s.cloud_cover is None, s.cloud_cover or 0.0))[:3]
    described = ", ".join(
        f"{s.id} of {s.acquired:%Y-%m-%d}" + (f" ({s.cloud_cover:g}% cloud)" if s.cloud_cover is not None else "")
        for s in shown
    )
    window = intent.constraints.date_range
    during = f" in {window[0]:%Y-%m-%d}..{window[1]:%Y-%m-%d}" if window else ""
    return f"; its scene{'s' if len(scenes) > 1 else ''}{during}: {described}"


def build_spec(
    dataset: Dataset, model: Model, intent: Intent, export_base: str, sar: bool = False
) -> tuple[common_pb2.PipelineSpec, list[BlockReason]]:
    tile = model.tile_size_px
    per_pixel = model.task in PER_PIXEL_TASKS
    overlap = tile // 16 if per_pixel and tile >= 64 else 0
    normalization, why_normalization = _normalization(dataset, model, sar)
    vectorize = (
        intent.wants_vectors if intent.wants_vectors is not None else model.task in ("segmentation", "detection")
    )
    formats = [common_pb2.EXPORT_FORMAT_COG]
    if vectorize:
        formats.append(common_pb2.EXPORT_FORMAT_GEOJSON)
    if intent.wants_preview:
        formats.append(common_pb2.EXPORT_FORMAT_PNG_PREVIEW)
    resolution = dataset.resolution_m or 0.0
    match = match_bands(model.bands, dataset.bands)
    read_bands = [chosen or wanted for chosen, wanted in zip(match.chosen, model.bands, strict=True)]
    batch = 16 if tile and tile <= 256 else 8 if tile and tile <= 512 else 4

    blocks = [
        common_pb2.Block(
            id="scene",
            label=f"Read {dataset.name}",
            dataset=common_pb2.DatasetBlock(dataset_id=dataset.id, bands=read_bands),
        ),
        common_pb2.Block(
            id="tiles",
            label=f"Cut {tile or 'model-sized'} px tiles",
            tile=common_pb2.TileBlock(tile_size_px=tile, overlap_px=overlap, normalization=normalization),
        ),
        common_pb2.Block(
            id="infer", label=f"Run {model.name}", model=common_pb2.ModelBlock(model_id=model.id, batch_size=batch)
        ),
        common_pb2.Block(
            id="mosaic",
            label="Stitch predictions",
            stitch=common_pb2.StitchBlock(
                blend=common_pb2.BLEND_MODE_MEAN if overlap else common_pb2.BLEND_MODE_CENTER
            ),
        ),
    ]
    edges = [("scene", "tiles"), ("tiles", "infer"), ("infer", "mosaic")]
    if vectorize:
        blocks.append(
            common_pb2.Block(
                id="polygons",
                label="Vectorise the mask",
                vectorize=common_pb2.VectorizeBlock(
                    threshold=0.5,
                    simplify_tolerance_m=resolution,
                    min_area_m2=4 * resolution * resolution,
                    crs="EPSG:4326",
                ),
            )
        )
        edges += [("mosaic", "polygons"), ("polygons", "out")]
    uri = export_uri(export_base, dataset, model)
    blocks.append(
        common_pb2.Block(id="out", label="Export results", export=common_pb2.ExportBlock(uri=uri, formats=formats))
    )
    edges.append(("mosaic", "out"))
    spec = common_pb2.PipelineSpec(
        blocks=blocks, edges=[common_pb2.Edge(source_block_id=s, target_block_id=t) for s, t in edges]
    )

    format_names = [common_pb2.ExportFormat.Name(f).removeprefix("EXPORT_FORMAT_") for f in formats]
    rationale = [
        BlockReason(
            "scene",
            f"{dataset.name} ({dataset.sensor or 'unknown sensor'}, {resolution:g} m) was ranked first for the prompt; "
            f"it reads only {', '.join(read_bands)}, the bands {model.name} takes, in its order"
            + "".join(f"; {sub.describe()}, a near equivalent (pipeline.bands)" for sub in match.substitutions)
            + scene_note(dataset, intent),
        ),
        BlockReason(
            "tiles",
            f"{tile} px tiles because {model.name} takes {tile} px"
            + (
                f"; {overlap} px overlap so per-pixel predictions have context at tile edges"
                if overlap
                else "; no overlap, as it predicts per tile"
            )
            + f"; {why_normalization}"
            if tile
            else f"tiles of the model's own size; {why_normalization}",
        ),
        BlockReason(
            "infer",
            f"{' '.join(filter(None, (model.name, model.version)))} does {model.task or 'an unknown task'}; "
            f"batches of {batch} tiles keep requests small",
        ),
        BlockReason(
            "mosaic",
            "overlapping predictions are averaged"
            if overlap
            else "each pixel comes from the tile whose centre is nearest",
        ),
    ]
    if vectorize:
        rationale.append(
            BlockReason(
                "polygons",
                "the prompt asks for polygons or the task yields a mask: pixels above 0.5 become polygons, "
                "simplified to "
                f"{resolution:g} m (one pixel) and dropping areas under four pixels, in EPSG:4326",
            )
        )
    rationale.append(BlockReason("out", f"writes {', '.join(format_names)} under {uri}"))
    return spec, rationale
