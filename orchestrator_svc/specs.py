"""LaunchRun's request, checked and turned into a plan of configured blocks, before any work starts.

Three layers of checks, each reporting every problem it finds:
1. the resolved inputs (datasets: URI and band names; models: endpoints,
   input spec, outputs) and the graph itself, with core's own rules
   (core_svc.pipelines.validate_spec: block types, ids, edges, wiring,
   configs, bands reaching models): INVALID_ARGUMENT with field violations;
2. what the orchestrator adds: a model output stitch can place, export
   formats its inputs allow, a vectorize CRS PROJ knows;
3. the world: every scene exists and opens as a georeferenced GeoTIFF with
   the bands the catalog lists, every export destination is writable:
   FAILED_PRECONDITION with google.rpc.PreconditionFailure details (an S3
   server that does not answer is UNAVAILABLE).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2

from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from core_svc import convert
from core_svc.domain import Dataset, InputSpec, Model, OutputSpec
from core_svc.pipelines import validate_spec
from core_svc.validation import check_bands, check_storage_uri
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable
from orchestrator_svc import blocks
from clients.storage import Storage, StorageError

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
DEFAULT_TILE_PX = 256
FORMAT_NAMES = {"EXPORT_FORMAT_COG": "cog", "EXPORT_FORMAT_GEOJSON": "geojson", "EXPORT_FORMAT_PNG_PREVIEW": "png_preview"}
NEEDS = {"cog": "raster", "png_preview": "raster", "geojson": "vectors"}
INPUT_NAMES = {"tile": "scene", "model": "tiles", "stitch": "predictions", "vectorize": "raster"}
UPSTREAM_DATA = {"dataset": "scene", "tile": "tiles", "model": "predictions", "stitch": "raster", "vectorize": "vectors"}


@dataclass(frozen=True)
class Precondition:
    subject: str  # e.g. 'datasets["scene"].uri'
    description: str
    type: str = "DATASET"  # or "DESTINATION"


class PreconditionsFailed(FailedPrecondition):
    """The spec is well formed but what it points at is not usable (yet)."""

    def __init__(self, problems: list[Precondition]) -> None:
        self.problems = problems
        first = problems[0]
        message = f"{first.subject}: {first.description}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        super().__init__(message)

    def details(self) -> list[any_pb2.Any]:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(type=p.type, subject=p.subject, description=p.description)
                for p in self.problems
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(failure)
        return [packed]


@dataclass(frozen=True)
class BlockPlan:
    id: str
    index: int  # position in spec.blocks
    kind: str
    op_name: str  # Dagster op names allow [A-Za-z0-9_] only
    config: dict  # the op's Dagster config
    inputs: dict[str, str] = field(default_factory=dict)  # op input name -> upstream block id


@dataclass(frozen=True)
class Plan:
    blocks: tuple[BlockPlan, ...]  # in topological order

    def block_of_step(self) -> dict[str, str]:
        return {b.op_name: b.id for b in self.blocks}


def request_to_json(request: pb.LaunchRunRequest) -> str:
    return json_format.MessageToJson(request, indent=None, sort_keys=True)


def request_from_json(text: str) -> pb.LaunchRunRequest:
    return json_format.Parse(text, pb.LaunchRunRequest())


def _key(name: str, key: str) -> str:
    return f'{name}["{key}"]'


def _check_resolved(request: pb.LaunchRunRequest) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    for key, dataset in sorted(request.datasets.items()):
        where = _key("datasets", key)
        found += [FieldViolation(f"{where}.{v.field}", v.description) for v in check_storage_uri(dataset.uri, "uri")]
        found += [FieldViolation(f"{where}.{v.field}", v.description) for v in check_bands(list(dataset.bands), "bands", required=True)]
    for key, model in sorted(request.models.items()):
        where = _key("models", key)
        if not model.model_name:
            found.append(FieldViolation(f"{where}.model_name", "is required: the name the endpoint serves the model under"))
        if not model.endpoints:
            found.append(FieldViolation(f"{where}.endpoints", "is required: at least one host:port of a running model endpoint"))
        for i, endpoint in enumerate(model.endpoints):
            match = ENDPOINT.match(endpoint)
            if not match or not 0 < int(match.group(2)) < 65536:
                found.append(FieldViolation(f"{where}.endpoints[{i}]", f"{endpoint!r} is not host:port"))
        found += [FieldViolation(f"{where}.input.{v.field}", v.description) for v in check_bands(list(model.input.bands), "bands", required=True)]
        if model.input.dtype.upper() not in blocks.NUMPY_DTYPES:
            found.append(FieldViolation(f"{where}.input.dtype", f"{model.input.dtype!r}: one of {', '.join(blocks.NUMPY_DTYPES)}"))
        if not 0 <= model.input.tile_size_px <= 8192:
            found.append(FieldViolation(f"{where}.input.tile_size_px", "must be between 0 (any size) and 8192"))
        if not model.outputs:
            found.append(FieldViolation(f"{where}.outputs", "name at least one output tensor"))
        for i, output in enumerate(model.outputs):
            if not output.name:
                found.append(FieldViolation(f"{where}.outputs[{i}].name", "is required"))
            if output.dtype.upper() not in blocks.NUMPY_DTYPES:
                found.append(FieldViolation(f"{where}.outputs[{i}].dtype", f"{output.dtype!r}: one of {', '.join(blocks.NUMPY_DTYPES)}"))
    return found


def _catalog_views(request: pb.LaunchRunRequest) -> tuple[Callable[[str], Dataset | None], Callable[[str], Model | None]]:
    """Core's find_dataset / find_model, answered from the request's resolved maps."""

    def find_dataset(dataset_id: str) -> Dataset | None:
        if dataset_id not in request.datasets:
            return None
        resolved = request.datasets[dataset_id]
        return Dataset(id=dataset_id, name=dataset_id, uri=resolved.uri, bands=list(resolved.bands))

    def find_model(model_id: str) -> Model | None:
        if model_id not in request.models:
            return None
        resolved = request.models[model_id]
        spec = resolved.input
        return Model(
            id=model_id,
            name=resolved.model_name or model_id,
            version=resolved.model_version,
            input=InputSpec([b.lower() for b in spec.bands], spec.tile_size_px, spec.dtype.upper(), spec.value_min, spec.value_max),
            outputs=[OutputSpec(o.name, o.dtype.upper(), list(o.shape), o.description) for o in resolved.outputs],
        )

    return find_dataset, find_model


def _op_names(block_ids: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    used: set[str] = set()
    for block_id in block_ids:
        base = re.sub(r"[^A-Za-z0-9_]", "_", block_id)
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names[block_id] = name
    return names


def _stitchable_channels(shape: list[int], tile_px: int) -> int | None:
    """Channels of a per-pixel output ([C, T, T] or [T, T], -1 for any), or None when stitch cannot place it."""
    dims = list(shape)
    if len(dims) == 2:
        dims = [1, *dims]
    if len(dims) != 3:
        return None
    channels, height, width = dims
    if any(d not in (-1, tile_px) for d in (height, width)):
        return None
    return channels if channels > 0 else None


def build_plan(request: pb.LaunchRunRequest, *, default_batch_size: int, default_max_concurrency: int, infer_timeout_s: float) -> Plan:
    """Check the request's form and graph (INVALID_ARGUMENT) and configure every block. Touches nothing outside."""
    violations = _check_resolved(request)
    spec = convert.spec_from_proto(request.spec)
    find_dataset, find_model = _catalog_views(request)
    problems, order = validate_spec(spec, find_dataset, find_model)
    violations += [FieldViolation(f"spec.{p.field}", p.description) for p in problems]
    if violations:
        raise InvalidArgument(violations)

    by_id = {b.id: (i, b) for i, b in enumerate(spec.blocks)}
    inputs: dict[str, list[str]] = {b.id: [] for b in spec.blocks}
    for edge in spec.edges:
        inputs[edge.target].append(edge.source)
    downstream: dict[str, list[str]] = {b.id: [] for b in spec.blocks}
    for edge in spec.edges:
        downstream[edge.source].append(edge.target)
    op_names = _op_names([b.id for b in spec.blocks])

    def upstream(block_id: str, kind: str) -> str:
        return next(s for s in inputs[block_id] if by_id[s][1].kind == kind)

    plans: list[BlockPlan] = []
    for block_id in order:
        i, block = by_id[block_id]
        config, where = block.config, f"spec.blocks[{i}].{block.kind}"
        wiring = {INPUT_NAMES[block.kind]: inputs[block_id][0]} if block.kind in INPUT_NAMES else {}
        if block.kind == "dataset":
            resolved = request.datasets[config["dataset_id"]]
            op_config = {"dataset_id": config["dataset_id"], "uri": resolved.uri, "file_bands": list(resolved.bands), "bands": list(config.get("bands", []))}
        elif block.kind == "tile":
            size = config.get("tile_size_px", 0)
            if not size:
                sizes = {find_model(by_id[m][1].config["model_id"]).input.tile_size_px for m in downstream[block_id]} - {0}  # type: ignore[union-attr]
                if len(sizes) > 1:
                    violations.append(FieldViolation(f"{where}.tile_size_px", f"the models it feeds take different tile sizes ({sorted(sizes)}); set one"))
                size = sizes.pop() if sizes else DEFAULT_TILE_PX
            mode = config.get("normalization", "NORMALIZATION_UNSPECIFIED").removeprefix("NORMALIZATION_").lower()
            op_config = {"tile_size_px": size, "overlap_px": config.get("overlap_px", 0), "normalization": "none" if mode == "unspecified" else mode}
            if 2 * op_config["overlap_px"] >= size:
                violations.append(FieldViolation(f"{where}.overlap_px", f"must be less than half of the tile size ({size}px)"))
        elif block.kind == "model":
            model = request.models[config["model_id"]]
            tile_block = by_id[inputs[block_id][0]][1]
            tile_px = tile_block.config.get("tile_size_px", 0) or model.input.tile_size_px or DEFAULT_TILE_PX
            output = model.outputs[0]
            channels = _stitchable_channels(list(output.shape), tile_px)
            if channels is None and any(by_id[d][1].kind == "stitch" for d in downstream[block_id]):
                violations.append(
                    FieldViolation(
                        f"{where}.model_id",
                        f"model {model.model_name!r} output {output.name!r} has shape {list(output.shape)}; stitch needs a "
                        f"per-pixel output [channels, {tile_px}, {tile_px}]",
                    )
                )
            op_config = {
                "model_id": config["model_id"],
                "model_name": model.model_name,
                "model_version": model.model_version,
                "endpoints": list(model.endpoints),
                "bands": [b.lower() for b in model.input.bands],
                "dtype": model.input.dtype.upper(),
                "output": output.name,
                "output_dtype": output.dtype.upper(),
                "output_channels": channels or 1,
                "batch_size": config.get("batch_size", 0) or default_batch_size,
                "max_concurrency": config.get("max_concurrency", 0) or default_max_concurrency,
                "timeout_s": infer_timeout_s,
            }
        elif block.kind == "stitch":
            blend = config.get("blend", "BLEND_MODE_UNSPECIFIED").removeprefix("BLEND_MODE_").lower()
            op_config = {"blend": "mean" if blend == "unspecified" else blend}
        elif block.kind == "vectorize":
            crs = config.get("crs", "")
            if crs:
                from rasterio.crs import CRS
                from rasterio.errors import CRSError

                try:
                    CRS.from_user_input(crs)
                except CRSError:
                    violations.append(FieldViolation(f"{where}.crs", f"{crs!r} is not a coordinate reference system PROJ knows, e.g. EPSG:4326"))
            op_config = {
                "threshold": float(config.get("threshold", 0.0)),
                "simplify_tolerance_m": float(config.get("simplify_tolerance_m", 0.0)),
                "min_area_m2": float(config.get("min_area_m2", 0.0)),
                "crs": crs,
            }
        else:  # export
            carried = {UPSTREAM_DATA[by_id[s][1].kind]: s for s in inputs[block_id]}
            wiring = dict(carried)
            formats = [FORMAT_NAMES.get(f, "") for f in config.get("formats", [])]
            for j, name in enumerate(formats):
                if not name:
                    violations.append(FieldViolation(f"{where}.formats[{j}]", "is unspecified; use COG, GEOJSON or PNG_PREVIEW"))
                elif NEEDS[name] not in carried:
                    source = "a stitch" if NEEDS[name] == "raster" else "a vectorize"
                    violations.append(FieldViolation(f"{where}.formats[{j}]", f"{name} needs {source} block's output; connect one to {block_id!r}"))
            if not formats:
                formats = [f for f in ("cog", "png_preview", "geojson") if NEEDS[f] in carried]
            op_config = {"run_id": request.run_id, "block_id": block_id, "uri": config["uri"], "formats": sorted(set(formats), key=formats.index)}
        plans.append(BlockPlan(block_id, i, block.kind, op_names[block_id], op_config, wiring))
    if violations:
        raise InvalidArgument(violations)
    return Plan(tuple(plans))


def check_world(plan: Plan, storage: Storage) -> None:
    """Every scene readable as what the catalog says, every export destination writable.
    Raises PreconditionsFailed (FAILED_PRECONDITION) or Unavailable (the S3 server does not answer)."""
    problems: list[Precondition] = []
    unreachable: list[str] = []
    for block in plan.blocks:
        if block.kind == "dataset":
            subject = f'datasets["{block.config["dataset_id"]}"].uri'
            uri = block.config["uri"]
            try:
                storage.size(uri)
                with blocks.gdal_env(**storage.gdal_options(uri)):
                    blocks.inspect_scene(storage.gdal_path(uri), block.config["file_bands"], block.config["bands"])
            except StorageError as error:
                if error.unreachable:
                    unreachable.append(str(error))
                else:
                    problems.append(Precondition(subject, f"{uri}: no such object" if error.missing else str(error)))
            except blocks.RasterError as error:
                problems.append(Precondition(subject, f"{uri} {error}"))
        elif block.kind == "export":
            try:
                storage.check_writable(block.config["uri"])
            except StorageError as error:
                subject = f"spec.blocks[{block.index}].export.uri"
                if error.unreachable:
                    unreachable.append(str(error))
                else:
                    reason = f"bucket of {block.config['uri']} does not exist" if error.missing else str(error)
                    problems.append(Precondition(subject, reason, "DESTINATION"))
    if unreachable:
        raise Unavailable(unreachable[0])
    if problems:
        raise PreconditionsFailed(problems)
