"""The pipeline package's table against the contract and the orchestrator, and the shared enum<->name rule."""

from __future__ import annotations

import pytest

from constellation.common.v1 import common_pb2 as c
from constellation.hosting.v1 import hosting_pb2
from mesh.enums import enum_name, enum_value, prefix_of
from orchestrator_svc.ops import OP_DEFS
from pipeline.convert import spec_from_proto, spec_to_proto
from pipeline.kinds import DATA_KINDS, EXPORT_FORMATS, KINDS


def test_every_block_config_in_the_proto_has_one_kind_and_one_op():
    oneof = c.Block.DESCRIPTOR.oneofs_by_name["config"]
    assert sorted(f.name for f in oneof.fields) == sorted(KINDS)
    assert sorted(OP_DEFS) == sorted(KINDS)
    for kind in KINDS.values():
        assert kind.produces is None or kind.produces in DATA_KINDS
        for port in kind.ports:
            assert port.accepts <= set(DATA_KINDS)
            assert all(any(k.produces == d for k in KINDS.values()) for d in port.accepts), (kind.name, port)
            assert port.name in OP_DEFS[kind.name].ins, (kind.name, port.name)


def test_export_formats_cover_the_enum():
    names = {enum_name(c.ExportFormat, v) for v in c.ExportFormat.values()} - {""}
    assert names == set(EXPORT_FORMATS)


@pytest.mark.parametrize(
    "enum_type, number, name",
    [
        (c.ModelTask, c.MODEL_TASK_SEGMENTATION, "segmentation"),
        (c.Normalization, c.NORMALIZATION_MIN_MAX, "min_max"),
        (hosting_pb2.DeploymentState, hosting_pb2.DEPLOYMENT_STATE_READY, "ready"),
        (c.RunState, 0, ""),
    ],
)
def test_enum_names_round_trip(enum_type, number, name):
    assert enum_name(enum_type, number) == name and enum_value(enum_type, name) == number


def test_enum_prefix_follows_the_enum_name():
    assert prefix_of(c.BlendMode) == "BLEND_MODE_" and prefix_of(c.SpectralIndex) == "SPECTRAL_INDEX_"


def test_typed_configs_read_enums_by_name_and_the_spec_round_trips():
    message = c.PipelineSpec(
        blocks=[
            c.Block(id="t", tile=c.TileBlock(tile_size_px=128, normalization=c.NORMALIZATION_Z_SCORE)),
            c.Block(id="o", export=c.ExportBlock(uri="s3://b/p", formats=[c.EXPORT_FORMAT_COG, 0])),
            c.Block(id="v", vectorize=c.VectorizeBlock(threshold=float("nan"))),
            c.Block(id="i", index=c.IndexBlock(first_band="nir", second_band="swir1")),
        ],
        edges=[c.Edge(source_block_id="t", target_block_id="o")],
    )
    spec = spec_from_proto(message)
    tile, export, vectorize, index = (b.settings for b in spec.blocks)
    assert (tile.tile_size_px, tile.normalization) == (128, "z_score")
    assert export.formats == ("cog", "")
    assert vectorize.threshold != vectorize.threshold  # NaN arrives as a float, not the string JSON writes
    assert index.bands() == ("nir", "swir1") and index.output_name == "nd_nir_swir1"
    assert spec_to_proto(spec) == message
