"""A catalog model as a STAC Item with the Machine Learning Model extension (MLM v1.4.0), and back.

    model_item(model)  -> dict   # what `constellation models export-stac` writes and runs publish next to results
    model_from_item(d) -> Model  # what ImportModelFromStac registers; InvalidArgument names what does not fit

The mapping (docs/stac.md "Models as MLM items"):
- `mlm:name` is the model's name, `constellation:version` its version (MLM has no version field), the item id
  `<name>-<version>`; `mlm:architecture` is the model's name too: the catalog does not record an architecture.
- `mlm:tasks`: segmentation -> semantic-segmentation, classification, detection -> object-detection, regression.
- one `mlm:input` named "tile": the model's bands (also as the model asset's `eo:bands`, which MLM cross-checks), shape
  [-1, bands, tile, tile] (-1 where the tile size is free) in batch/bands/height/width order, the data type, and
  the input value range as one `clip` value scaling (the model reads values in [minimum, maximum]).
- one `mlm:output` per output tensor: its shape with a leading batch dimension, data type and description.
- `mlm:framework` from the card's requirements (torch -> PyTorch, ...) where one names a known framework.
- the asset `model` (role `mlm:model`, `mlm:artifact_type` "constellation-model-folder") points at the source
  (a git URL without its user and password).
- the card: `description` and `license` (STAC common metadata); its data, requirements, metrics and the tags as
  `constellation:` properties, so the round trip is exact.

Only what the catalog's model spec can hold is read back: more than one input, an input whose dimensions are not
batch/bands/height/width with a square tile, a value scaling other than one range, a task with no catalog
equivalent, or no `mlm:model` asset is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pystac
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.mlm import (
    AssetGeneralMLMExtension,
    InputStructure,
    MLMExtension,
    ModelInput,
    ModelOutput,
    ResultStructure,
    TaskType,
    ValueScaling,
    ValueScalingType,
)
from pystac.extensions.raster import DataType

from constellation.common.v1 import common_pb2 as common
from constellation.core.v1 import core_pb2
from mesh.errors import FieldViolation, InvalidArgument
from model_runtime.manifest import NUMPY_DTYPES
from pipeline.rules import check_bands

ARTIFACT_TYPE = "constellation-model-folder"  # a folder (or git/hf source) holding constellation.yaml
MAX_ITEM_CHARS = 16_384  # as mesh.limits bounds any string of a request

TASKS = {
    common.MODEL_TASK_SEGMENTATION: TaskType.SEMANTIC_SEGMENTATION,
    common.MODEL_TASK_CLASSIFICATION: TaskType.CLASSIFICATION,
    common.MODEL_TASK_DETECTION: TaskType.OBJECT_DETECTION,
    common.MODEL_TASK_REGRESSION: TaskType.REGRESSION,
}
# MLM tasks read back: each catalog task's own name, and the MLM names that mean the same.
TASKS_BACK: dict[str, common.ModelTask.ValueType] = {
    **{str(mlm): task for task, mlm in TASKS.items()},
    "segmentation": common.MODEL_TASK_SEGMENTATION,
    "scene-classification": common.MODEL_TASK_CLASSIFICATION,
    "detection": common.MODEL_TASK_DETECTION,
}
# Open Inference Protocol datatypes <-> MLM (raster) data types; BYTES has no raster equivalent.
DATA_TYPES = {oip: DataType(numpy) for oip, numpy in NUMPY_DTYPES.items() if oip != "BOOL"}
DATA_TYPES_BACK = {str(numpy): oip for oip, numpy in DATA_TYPES.items()}
FRAMEWORKS = {  # requirement name -> MLM framework name
    "torch": "PyTorch", "tensorflow": "TensorFlow", "onnxruntime": "ONNX", "jax": "JAX",
    "scikit-learn": "scikit-learn", "xgboost": "XGBoost", "lightgbm": "LightGBM",
}  # fmt: skip
INPUT_DIMS = ["batch", "bands", "height", "width"]


def _framework(dependencies: list[str]) -> str | None:
    for requirement in dependencies:
        name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()
        if name in FRAMEWORKS:
            return FRAMEWORKS[name]
    return None


def _output_dims(rank: int) -> list[str]:
    return ["batch", *(["channel", "height", "width"] if rank == 3 else [f"dim{i}" for i in range(rank)])]


def _without_credentials(source: str) -> str:
    """A git URL's user and password (https://user:token@host/...) never go into a published item."""
    try:
        parts = urlsplit(source)
        if parts.username is None and parts.password is None:
            return source
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))
    except ValueError:
        return source


def model_item(model: core_pb2.Model, when: dt.datetime | None = None) -> dict[str, Any]:
    """The model as an MLM STAC Item (a dict ready for json.dumps). Refuses what MLM cannot carry (BYTES tensors)."""
    problems = []
    if model.input.dtype.upper() not in DATA_TYPES:
        problems.append(FieldViolation("input.dtype", f"{model.input.dtype!r} has no MLM data type"))
    for i, output in enumerate(model.outputs):
        if output.dtype.upper() not in DATA_TYPES:
            problems.append(FieldViolation(f"outputs[{i}].dtype", f"{output.dtype!r} has no MLM data type"))
    if model.task not in TASKS:
        problems.append(FieldViolation("task", "is required to describe the model with MLM"))
    if problems:
        raise InvalidArgument(problems)
    if when is None:
        when = model.create_time.ToDatetime(dt.UTC) if model.HasField("create_time") else dt.datetime.now(dt.UTC)
    item = pystac.Item(f"{model.name}-{model.version}", geometry=None, bbox=None, datetime=when, properties={})
    bands = list(model.input.bands)
    tile = model.input.tile_size_px or -1
    scaling = None
    if model.input.value_min or model.input.value_max:
        scaling = ValueScaling.create(ValueScalingType.CLIP, minimum=model.input.value_min,
                                      maximum=model.input.value_max)  # fmt: skip
    task = TASKS[model.task]
    MLMExtension.ext(item, add_if_missing=True).apply(
        name=model.name,
        architecture=model.name,
        tasks=[task],
        framework=_framework(list(model.card.dependencies)),
        input=[
            ModelInput.create(
                name="tile",
                bands=bands,
                input=InputStructure.create(
                    [-1, len(bands), tile, tile], INPUT_DIMS, DATA_TYPES[model.input.dtype.upper()]
                ),
                value_scaling=scaling,
            )
        ],
        output=[
            ModelOutput.create(
                name=o.name,
                tasks=[task],
                result=ResultStructure.create([-1, *o.shape], _output_dims(len(o.shape)), DATA_TYPES[o.dtype.upper()]),
                description=o.description or None,
            )
            for o in model.outputs
        ],
    )
    props = item.properties
    if scaling is not None:  # pystac 1.15 sets one object; MLM 1.4.0's schema wants a list of them
        props["mlm:input"][0]["value_scaling"] = [scaling.to_dict()]
    props["constellation:version"] = model.version
    if model.card.description:
        props["description"] = model.card.description
    if model.card.license:
        props["license"] = model.card.license
    if model.card.data_used:
        props["constellation:data_used"] = model.card.data_used
    if model.card.dependencies:
        props["constellation:requirements"] = list(model.card.dependencies)
    if model.card.metrics:
        props["constellation:metrics"] = dict(sorted(model.card.metrics.items()))
    if model.tags:
        props["constellation:tags"] = list(model.tags)
    asset = pystac.Asset(_without_credentials(model.source), title=f"{model.name} {model.version}", roles=["mlm:model"])
    item.add_asset("model", asset)
    AssetGeneralMLMExtension.ext(asset, add_if_missing=True).apply(artifact_type=ARTIFACT_TYPE)
    # MLM cross-checks the input's bands against eo, raster or STAC 1.1 bands; the schemas of eo 1.1.0 and STAC
    # 1.1.0 refuse bands in the item's properties unless an asset has some, so they go on the model asset.
    EOExtension.ext(asset, add_if_missing=True).apply(bands=[Band.create(name=band) for band in bands])
    return item.to_dict(include_self_link=False, transform_hrefs=False)


# --------------------------------------------------------------------------- back


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _get(data: dict, key: str, kind: type, where: str, problems: list[FieldViolation]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is not dict and not value):
        problems.append(FieldViolation(where, f"is required ({kind.__name__})"))
        return None
    return value


def _task(tasks: Any, where: str, problems: list[FieldViolation]) -> common.ModelTask.ValueType:
    known = [TASKS_BACK[t] for t in tasks if isinstance(t, str) and t in TASKS_BACK] if isinstance(tasks, list) else []
    if len(set(known)) != 1:
        problems.append(
            FieldViolation(where, f"needs exactly one task the catalog knows: one of {', '.join(sorted(TASKS_BACK))}")
        )
        return common.MODEL_TASK_UNSPECIFIED
    return known[0]


def _data_type(value: Any, where: str, problems: list[FieldViolation]) -> str:
    if value not in DATA_TYPES_BACK:
        problems.append(FieldViolation(where, f"{str(value)[:40]!r}: one of {', '.join(sorted(DATA_TYPES_BACK))}"))
        return ""
    return DATA_TYPES_BACK[value]


def _value_range(scaling: Any, where: str, problems: list[FieldViolation]) -> tuple[float, float]:
    """One range for every band: `clip` (or the same `clip` per band) -> (minimum, maximum); none -> (0, 0)."""
    if scaling is None or scaling == []:
        return 0.0, 0.0
    if isinstance(scaling, list) and all(isinstance(s, dict) for s in scaling):
        ranges = {(s.get("type"), s.get("minimum"), s.get("maximum")) for s in scaling}
        if len(ranges) == 1:
            kind, low, high = ranges.pop()
            if kind == "clip" and all(isinstance(v, int | float) for v in (low, high)):
                return float(low), float(high)
    problems.append(
        FieldViolation(where, "the catalog holds one input value range: give one {type: clip, minimum, maximum}")
    )
    return 0.0, 0.0


def _input(inputs: Any, problems: list[FieldViolation]) -> common.ModelInputSpec:
    where = "properties.mlm:input"
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        problems.append(FieldViolation(where, "the catalog holds exactly one model input"))
        return common.ModelInputSpec()
    first, where = inputs[0], f"{where}[0]"
    raw_bands = first.get("bands")
    named = [_object(b).get("name", b) for b in raw_bands] if isinstance(raw_bands, list) else []
    bands = [b.lower() for b in named if isinstance(b, str)]
    if len(bands) != len(named):
        problems.append(FieldViolation(f"{where}.bands", "band names are strings"))
    problems += [
        FieldViolation(f"{where}.{v.field}", v.description) for v in check_bands(bands, "bands", required=True)
    ]
    structure = _object(first.get("input"))
    shape, dims = structure.get("shape"), structure.get("dim_order")
    tile = 0
    if dims not in (INPUT_DIMS, INPUT_DIMS[1:]):
        problems.append(FieldViolation(f"{where}.input.dim_order", f"must be {INPUT_DIMS} (batch optional)"))
    elif not isinstance(shape, list) or len(shape) != len(dims) or not all(isinstance(d, int) for d in shape):
        problems.append(FieldViolation(f"{where}.input.shape", f"one integer per dimension of {dims}"))
    else:
        channels, height, width = shape[-3:]
        if channels not in (-1, len(bands)):
            problems.append(FieldViolation(f"{where}.input.shape", f"{channels} bands, but {len(bands)} are named"))
        if height != width or not (height == -1 or 0 < height <= 8192):
            problems.append(FieldViolation(f"{where}.input.shape", "tiles are square: height = width, or both -1"))
        tile = max(height, 0)
    dtype = _data_type(structure.get("data_type"), f"{where}.input.data_type", problems)
    low, high = _value_range(first.get("value_scaling"), f"{where}.value_scaling", problems)
    if first.get("pre_processing_function") not in (None, {}):
        problems.append(FieldViolation(f"{where}.pre_processing_function", "the catalog cannot run one: leave it out"))
    return common.ModelInputSpec(bands=bands, tile_size_px=tile, dtype=dtype, value_min=low, value_max=high)


def _outputs(outputs: Any, problems: list[FieldViolation]) -> list[common.ModelOutputSpec]:
    where = "properties.mlm:output"
    if not isinstance(outputs, list) or not outputs:
        problems.append(FieldViolation(where, "name at least one output"))
        return []
    found = []
    for i, output in enumerate(outputs):
        here = f"{where}[{i}]"
        if not isinstance(output, dict):
            problems.append(FieldViolation(here, "is an object"))
            continue
        result = _object(output.get("result"))
        shape, dims = result.get("shape"), result.get("dim_order")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape) or not shape:
            problems.append(FieldViolation(f"{here}.result.shape", "a list of integers"))
            shape = []
        elif isinstance(dims, list) and dims[:1] == ["batch"]:
            shape = shape[1:]  # the catalog's shapes leave the batch dimension out
        found.append(
            common.ModelOutputSpec(
                name=str(output.get("name", "")),
                dtype=_data_type(result.get("data_type"), f"{here}.result.data_type", problems),
                shape=shape,
                description=str(output.get("description") or ""),
            )
        )
    return found


def model_from_item(text: str) -> core_pb2.Model:
    """The catalog model an MLM item describes, or InvalidArgument naming every field that does not fit."""
    if len(text) > MAX_ITEM_CHARS:
        raise InvalidArgument.field("item_json", f"at most {MAX_ITEM_CHARS} characters")
    try:
        data = json.loads(text)
    except ValueError as error:
        raise InvalidArgument.field("item_json", f"is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("type") != "Feature":
        raise InvalidArgument.field("item_json", 'is not a STAC Item (a GeoJSON object of "type": "Feature")')
    extensions = data.get("stac_extensions")
    if not isinstance(extensions, list) or not any(
        isinstance(e, str) and e.startswith("https://stac-extensions.github.io/mlm/") for e in extensions
    ):
        raise InvalidArgument.field("stac_extensions", "does not list the MLM extension's schema")
    problems: list[FieldViolation] = []
    props = _get(data, "properties", dict, "properties", problems) or {}
    name = _get(props, "mlm:name", str, "properties.mlm:name", problems) or ""
    version = props.get("constellation:version") or props.get("version") or ""
    if not isinstance(version, str) or not version:
        problems.append(FieldViolation("properties.constellation:version", "is required: the model's version"))
        version = ""
    task = _task(props.get("mlm:tasks"), "properties.mlm:tasks", problems)
    model_input = _input(props.get("mlm:input"), problems)
    outputs = _outputs(props.get("mlm:output"), problems)
    sources = [
        href for a in _object(data.get("assets")).values()
        if isinstance(roles := _object(a).get("roles"), list) and "mlm:model" in roles
        and isinstance(href := a.get("href"), str)
    ]  # fmt: skip
    if len(sources) != 1:
        problems.append(FieldViolation("assets", 'needs exactly one asset with role "mlm:model": the model\'s source'))
    requirements = props.get("constellation:requirements", [])
    metrics = props.get("constellation:metrics", {})
    tags = props.get("constellation:tags", [])
    for key, value, kind in (("constellation:requirements", requirements, str), ("constellation:tags", tags, str)):
        if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
            problems.append(FieldViolation(f"properties.{key}", "a list of strings"))
    if not isinstance(metrics, dict) or not all(isinstance(v, int | float) for v in metrics.values()):
        problems.append(FieldViolation("properties.constellation:metrics", "an object of numbers"))
    text_fields = {k: props.get(k, "") for k in ("description", "license", "constellation:data_used")}
    for key, value in text_fields.items():
        if not isinstance(value, str):
            problems.append(FieldViolation(f"properties.{key}", "a string"))
    if problems:
        raise InvalidArgument(problems)
    card = common.ModelCard(
        description=text_fields["description"], data_used=text_fields["constellation:data_used"],
        dependencies=requirements, metrics=metrics, license=text_fields["license"],
    )  # fmt: skip
    return core_pb2.Model(
        name=name, version=version, task=task, source=sources[0], card=card,
        input=model_input, outputs=outputs, tags=tags,
    )  # fmt: skip
