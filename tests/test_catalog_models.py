"""Models in the catalog, against SQLite and PostgreSQL alike."""

from __future__ import annotations

import grpc
import pytest

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2
from mesh.errors import field_violations
from tests.catalog_data import register
from tests.conftest import rpc_error


def test_register_get_list_delete(core):
    model = register(core)
    assert model.id.startswith("mdl_") and model.state == core_pb2.MODEL_STATE_REGISTERED
    assert model.card.metrics["heldout_iou"] == pytest.approx(0.93)
    assert core.GetModel(core_pb2.GetModelRequest(id=model.id)) == model
    assert [m.id for m in core.ListModels(core_pb2.ListModelsRequest()).models] == [model.id]
    core.DeleteModel(core_pb2.DeleteModelRequest(id=model.id))
    assert rpc_error(core.GetModel, core_pb2.GetModelRequest(id=model.id)).code() == grpc.StatusCode.NOT_FOUND


def test_name_and_version_are_unique_together(core):
    register(core)
    assert rpc_error(register, core).code() == grpc.StatusCode.ALREADY_EXISTS
    second = register(core, version="1.1.0")
    assert [m.version for m in core.ListModels(core_pb2.ListModelsRequest(filter='name = "ndwi-water"')).models] == [
        "1.0.0",
        "1.1.0",
    ]
    assert second.version == "1.1.0"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "Bad Name"}, "model.name"),
        ({"version": ""}, "model.version"),
        ({"task": common_pb2.MODEL_TASK_UNSPECIFIED}, "model.task"),
        ({"source": ""}, "model.source"),
        ({"source": "relative/folder"}, "model.source"),
        ({"source": "https://[::1/repo.git"}, "model.source"),  # urllib's ValueError was INTERNAL (fuzzing)
        ({"input": common_pb2.ModelInputSpec(bands=["green", "ultraviolet"], dtype="FP32")}, "model.input.bands[1]"),
        ({"input": common_pb2.ModelInputSpec(bands=["green"], dtype="FLOAT")}, "model.input.dtype"),
        ({"outputs": []}, "model.outputs"),
        ({"outputs": [common_pb2.ModelOutputSpec(name="mask", dtype="FP32", shape=[0])]}, "model.outputs[0].shape"),
        (
            {"card": common_pb2.ModelCard(dependencies=["numpy @ https://example.org/numpy.whl"])},
            "model.card.dependencies[0]",
        ),
        ({"card": common_pb2.ModelCard(dependencies=["--index-url https://evil"])}, "model.card.dependencies[0]"),
    ],
)
def test_invalid_models_name_the_field(core, overrides, field):
    error = rpc_error(register, core, **overrides)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in field_violations(error)]
    assert core.ListModels(core_pb2.ListModelsRequest()).models == []


def test_sources_of_every_kind_are_accepted(core):
    for i, source in enumerate(
        ["/srv/models/a", "file:///srv/models/b", "https://git.example.org/m.git#main", "hf://org/tiny@abc123"]
    ):
        assert register(core, version=f"0.{i}", source=source).source == source


def test_filter_by_task_and_band(core):
    register(core)
    register(
        core,
        name="landcover",
        task=common_pb2.MODEL_TASK_CLASSIFICATION,
        input=common_pb2.ModelInputSpec(bands=["red", "nir", "swir1"], dtype="FP32"),
    )

    def names(text: str) -> list[str]:
        return [m.name for m in core.ListModels(core_pb2.ListModelsRequest(filter=text)).models]

    assert names('task = "segmentation"') == ["ndwi-water"]
    assert names('band = "swir1"') == ["landcover"]
    error = rpc_error(core.ListModels, core_pb2.ListModelsRequest(filter='task = "painting"'))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "painting" in error.details()
