"""The block kinds: what each one is configured with, takes in and produces.

This table is the one statement of the wiring rules. Validation (which edges
are allowed, what a block needs), the orchestrator (which op input an edge
feeds) and the console's palette all follow from it. A block kind's name is
its field in the `Block.config` oneof of constellation.common.v1.

Data that flows along edges is one of DATA_KINDS. A port is one named input of
a block (the orchestrator's op input of that name); it takes one edge carrying
one of the data kinds it accepts.

Adding a kind: its message and oneof member in common.proto, a config class
and a row in KINDS here, its config checks in `validation`, and its executor
in the orchestrator (docs/architecture.md walks through it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from constellation.common.v1 import common_pb2
from mesh.enums import EnumType, prefix_of, short_name

DATA_KINDS = ("scene", "tiles", "predictions", "raster", "vectors", "table")

# Export format (lowercase ExportFormat name) -> the data kind it is written from.
EXPORT_FORMATS = {"cog": "raster", "geojson": "vectors", "png_preview": "raster", "csv": "table", "json": "table"}

# Spectral index presets (lowercase SpectralIndex name) -> (first band, second band) of the
# normalized difference (first - second) / (first + second).
INDEX_PRESETS = {
    "ndwi": ("green", "nir"),  # open water > 0 (McFeeters 1996)
    "ndvi": ("nir", "red"),  # vegetation
    "mndwi": ("green", "swir1"),  # water, less confused by built-up land (Xu 2006)
    "nbr": ("nir", "swir2"),  # burn severity
}


class BlockConfig:
    """Base of the typed block configs: fields named as in the proto, enum values by lowercase name ("" unset)."""

    ENUMS: ClassVar[dict[str, EnumType[Any]]] = {}  # field name -> its proto enum type

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """From the proto JSON form (json_format.MessageToDict with proto field names), as specs are stored."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]  # every subclass is a dataclass
            if item.name not in data:
                continue
            value = data[item.name]
            enum_type = cls.ENUMS.get(item.name)
            if enum_type is not None:
                prefix = prefix_of(enum_type)
                value = [short_name(v, prefix) for v in value] if isinstance(value, list) else short_name(value, prefix)
            if isinstance(value, list):
                value = tuple(value)
            elif item.type == "float":
                value = float(value)  # json_format writes NaN and infinities as strings
            elif item.type == "int":
                value = int(value)
            values[item.name] = value
        return cls(**values)


@dataclass(frozen=True)
class DatasetConfig(BlockConfig):
    dataset_id: str = ""
    bands: tuple[str, ...] = ()  # empty: every band of the dataset
    resolution_m: float = 0.0  # one file per band (STAC items): the grid's pixel size; 0: the finest band read


@dataclass(frozen=True)
class TileConfig(BlockConfig):
    ENUMS: ClassVar[dict[str, EnumType[Any]]] = {"normalization": common_pb2.Normalization}
    tile_size_px: int = 0  # 0: the model's tile size
    overlap_px: int = 0
    normalization: str = ""  # "", "none", "min_max", "z_score", "reflectance"


@dataclass(frozen=True)
class ModelConfig(BlockConfig):
    model_id: str = ""
    batch_size: int = 0  # 0: the orchestrator's default
    max_concurrency: int = 0


@dataclass(frozen=True)
class StitchConfig(BlockConfig):
    ENUMS: ClassVar[dict[str, EnumType[Any]]] = {"blend": common_pb2.BlendMode}
    blend: str = ""  # "", "mean", "center"


@dataclass(frozen=True)
class VectorizeConfig(BlockConfig):
    threshold: float = 0.0
    simplify_tolerance_m: float = 0.0
    min_area_m2: float = 0.0
    crs: str = ""  # empty: the scene's CRS


@dataclass(frozen=True)
class ExportConfig(BlockConfig):
    ENUMS: ClassVar[dict[str, EnumType[Any]]] = {"formats": common_pb2.ExportFormat}
    uri: str = ""
    formats: tuple[str, ...] = ()  # names from EXPORT_FORMATS; "" for an unspecified entry; empty: all that fit


@dataclass(frozen=True)
class IndexConfig(BlockConfig):
    ENUMS: ClassVar[dict[str, EnumType[Any]]] = {"preset": common_pb2.SpectralIndex}
    preset: str = ""  # a name from INDEX_PRESETS, or "" to name the bands
    first_band: str = ""
    second_band: str = ""

    def bands(self) -> tuple[str, str]:
        """(first, second) of (first - second) / (first + second)."""
        return INDEX_PRESETS.get(self.preset, (self.first_band, self.second_band))

    @property
    def output_name(self) -> str:
        """The raster's name: the preset ("ndwi"), else nd_<first>_<second>."""
        return self.preset or f"nd_{self.first_band}_{self.second_band}"


@dataclass(frozen=True)
class SummaryConfig(BlockConfig):
    threshold: float = 0.0  # pixels above it count as area (0: NDWI water)
    mosaic: bool = False  # also merge the scenes' rasters into one


@dataclass(frozen=True)
class Port:
    name: str  # the orchestrator op's input name
    accepts: frozenset[str]  # data kinds an edge into it may carry


@dataclass(frozen=True)
class BlockKind:
    name: str  # the Block.config oneof field
    produces: str | None  # a data kind, or None for a sink
    ports: tuple[Port, ...]  # no ports: a source. One port: exactly one input. Several: each at most one, one at least
    config: type[BlockConfig]
    summary: str = ""

    @property
    def accepts(self) -> frozenset[str]:
        return frozenset().union(*(p.accepts for p in self.ports))

    def port_for(self, data_kind: str) -> Port | None:
        return next((p for p in self.ports if data_kind in p.accepts), None)


def _port(name: str, *accepts: str) -> Port:
    return Port(name, frozenset(accepts or (name,)))


KINDS: dict[str, BlockKind] = {
    k.name: k
    for k in (
        BlockKind("dataset", "scene", (), DatasetConfig, "reads a scene from the catalog"),
        BlockKind("tile", "tiles", (_port("scene"),), TileConfig, "cuts a scene into model-sized tiles"),
        BlockKind("model", "predictions", (_port("tiles"),), ModelConfig, "runs a hosted model over tiles"),
        BlockKind("stitch", "raster", (_port("predictions"),), StitchConfig, "merges tile predictions into a raster"),
        BlockKind("vectorize", "vectors", (_port("raster"),), VectorizeConfig, "turns a mask raster into polygons"),
        BlockKind("index", "raster", (_port("scene"),), IndexConfig, "band math: a normalized difference of two bands"),
        BlockKind("summary", "table", (_port("raster"),), SummaryConfig, "sums a raster up per scene: a time series"),
        BlockKind(
            "export",
            None,
            (_port("raster"), _port("vectors"), _port("table")),
            ExportConfig,
            "writes COG, GeoJSON, PNG, CSV, JSON",
        ),
    )
}
BLOCK_KINDS = tuple(KINDS)


def producers(data_kind: str) -> list[str]:
    """Block kinds that produce `data_kind`, in table order."""
    return [k.name for k in KINDS.values() if k.produces == data_kind]
