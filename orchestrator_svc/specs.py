"""LaunchRun's request, checked and turned into a plan of configured blocks, before any work starts.

Three layers of checks, each reporting every problem it finds:
1. the resolved inputs (datasets: URI and band names; models: endpoints,
   input spec, outputs) and the graph itself, with the pipeline package's
   rules (pipeline.validation.validate_spec: block types, ids, edges, wiring,
   configs, bands reaching models): INVALID_ARGUMENT with field violations;
2. what must hold to run it (pipeline.validation.check_runnable): a model
   output stitch can place, export formats its inputs allow, a vectorize CRS
   PROJ knows;
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

from clients.roots import StorageRoots
from clients.storage import Storage, StorageError
from constellation.common.v1 import common_pb2 as common
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable, shorten
from model_runtime.manifest import NUMPY_DTYPES, check_output_name
from orchestrator_svc import blocks, stacks
from orchestrator_svc.stac_out import Lineage
from pipeline.convert import spec_from_proto
from pipeline.kinds import KINDS
from pipeline.rules import check_bands, check_storage_uri
from pipeline.spec import DatasetView, ModelView, OutputView, PipelineSpec
from pipeline.validation import (
    DEFAULT_TILE_PX,
    check_runnable,
    export_formats,
    stitchable_channels,
    tile_size_of,
    validate_spec,
)

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_ITEMS = 1000  # scenes of one dataset in one run
ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


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
                error_details_pb2.PreconditionFailure.Violation(
                    type=p.type, subject=p.subject, description=p.description
                )
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
    # op input name -> the upstream ops' names (several only into a summary, one per item)
    inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    item: str = ""  # the STAC item this copy of the block works on (a dataset of many items); empty otherwise


@dataclass(frozen=True)
class Plan:
    blocks: tuple[BlockPlan, ...]  # in topological order

    def block_of_step(self) -> dict[str, str]:
        return {b.op_name: b.id for b in self.blocks}

    @property
    def items(self) -> int:
        """How many STAC items its blocks run over, one copy each (0: a dataset without items)."""
        return len({b.item for b in self.blocks if b.item})


def request_to_json(request: pb.LaunchRunRequest) -> str:
    return json_format.MessageToJson(request, indent=None, sort_keys=True)


def request_from_json(text: str) -> pb.LaunchRunRequest:
    return json_format.Parse(text, pb.LaunchRunRequest())


def _key(name: str, key: str) -> str:
    return f'{name}["{key}"]'


def _check_resolved(
    request: pb.LaunchRunRequest, roots: StorageRoots | None, model_host_allowed: Callable[[str], bool] | None
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    for key, dataset in sorted(request.datasets.items()):
        where = _key("datasets", key)
        if dataset.items:  # `uri` is where the STAC Item or search came from: only the items' files are read
            found += _check_items(where, dataset, roots)
        else:
            found += [
                FieldViolation(f"{where}.{v.field}", v.description)
                for v in check_storage_uri(dataset.uri, "uri", roots=roots, purpose="data")
            ]
        found += [
            FieldViolation(f"{where}.{v.field}", v.description)
            for v in check_bands(list(dataset.bands), "bands", required=True)
        ]
    for key, model in sorted(request.models.items()):
        where = _key("models", key)
        if not model.model_name:
            found.append(
                FieldViolation(f"{where}.model_name", "is required: the name the endpoint serves the model under")
            )
        if not model.endpoints:
            found.append(
                FieldViolation(f"{where}.endpoints", "is required: at least one host:port of a running model endpoint")
            )
        for i, endpoint in enumerate(model.endpoints):
            match = ENDPOINT.match(endpoint)
            if not match or not 0 < int(match.group(2)) < 65536:
                found.append(FieldViolation(f"{where}.endpoints[{i}]", f"{shorten(endpoint)!r} is not host:port"))
            elif model_host_allowed is not None and not model_host_allowed(match.group(1)):
                found.append(
                    FieldViolation(
                        f"{where}.endpoints[{i}]",
                        f"{shorten(endpoint)!r}: model endpoints must be on one of the hosts in "
                        "CONSTELLATION_ORCHESTRATOR_MODEL_HOSTS",
                    )
                )
        found += [
            FieldViolation(f"{where}.input.{v.field}", v.description)
            for v in check_bands(list(model.input.bands), "bands", required=True)
        ]
        if model.input.dtype.upper() not in NUMPY_DTYPES:
            found.append(
                FieldViolation(f"{where}.input.dtype", f"{model.input.dtype!r}: one of {', '.join(NUMPY_DTYPES)}")
            )
        if not 0 <= model.input.tile_size_px <= 8192:
            found.append(FieldViolation(f"{where}.input.tile_size_px", "must be between 0 (any size) and 8192"))
        if not model.outputs:
            found.append(FieldViolation(f"{where}.outputs", "name at least one output tensor"))
        for i, output in enumerate(model.outputs):
            name_problem = check_output_name(output.name)
            if name_problem:
                found.append(FieldViolation(f"{where}.outputs[{i}].name", name_problem))
            if output.dtype.upper() not in NUMPY_DTYPES:
                found.append(
                    FieldViolation(f"{where}.outputs[{i}].dtype", f"{output.dtype!r}: one of {', '.join(NUMPY_DTYPES)}")
                )
    return found


def item_tag(item: common.SceneItem) -> str:
    """The item's id as it appears in file names: letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", item.id).strip("._")[:80]


def _check_items(where: str, dataset: pb.ResolvedDataset, roots: StorageRoots | None) -> list[FieldViolation]:
    """Each item names its files (one per band, or one stacked raster), under the roots; ids usable in file names."""
    found: list[FieldViolation] = []
    if len(dataset.items) > MAX_ITEMS:
        return [FieldViolation(f"{where}.items", f"has {len(dataset.items)} items; a run reads at most {MAX_ITEMS}")]
    tags: dict[str, int] = {}
    for j, item in enumerate(dataset.items):
        at = f"{where}.items[{j}]"
        tag = item_tag(item)
        if not tag:
            found.append(
                FieldViolation(f"{at}.id", f"{shorten(item.id)!r}: an item needs an id with a letter or digit")
            )
        elif tag in tags:
            found.append(FieldViolation(f"{at}.id", f"{shorten(item.id)!r} names the same files as items[{tags[tag]}]"))
        tags.setdefault(tag, j)
        if not item.assets:
            if not item.uri:
                found.append(FieldViolation(at, "needs assets (one file per band) or a stacked raster's uri"))
            found += [
                FieldViolation(f"{at}.{v.field}", v.description)
                for v in check_storage_uri(item.uri, "uri", roots=roots, purpose="data")
            ]
            continue
        seen: set[str] = set()
        for a, asset in enumerate(item.assets):
            if asset.band in seen:
                found.append(FieldViolation(f"{at}.assets[{a}].band", f"band {asset.band!r} has two files"))
            seen.add(asset.band)
            if not 0 <= asset.band_index <= 10_000:
                found.append(FieldViolation(f"{at}.assets[{a}].band_index", "must be between 0 (the first) and 10000"))
            found += [
                FieldViolation(f"{at}.assets[{a}].{v.field}", v.description)
                for v in check_storage_uri(asset.uri, "uri", roots=roots, purpose="data")
            ]
        missing = [b for b in dataset.bands if b not in seen]
        if missing:
            found.append(FieldViolation(f"{at}.assets", f"has no file for band(s) {', '.join(missing)}"))
    return found


def _catalog_views(
    request: pb.LaunchRunRequest,
) -> tuple[Callable[[str], DatasetView | None], Callable[[str], ModelView | None]]:
    """The catalog views pipeline validation reads, answered from the request's resolved maps."""

    def find_dataset(dataset_id: str) -> DatasetView | None:
        if dataset_id not in request.datasets:
            return None
        return DatasetView(dataset_id, dataset_id, tuple(request.datasets[dataset_id].bands))

    def find_model(model_id: str) -> ModelView | None:
        if model_id not in request.models:
            return None
        resolved = request.models[model_id]
        outputs = tuple(OutputView(o.name, o.dtype.upper(), tuple(o.shape)) for o in resolved.outputs)
        bands = tuple(b.lower() for b in resolved.input.bands)
        return ModelView(model_id, resolved.model_name or model_id, bands, resolved.input.tile_size_px, outputs)

    return find_dataset, find_model


def _crs_known(crs: str) -> bool:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(crs)
    except (CRSError, ValueError):  # rasterio parses "EPSG:<code>" with int(): "EPSG:43I6" is a ValueError
        return False
    return True


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


def _lineage(request: pb.LaunchRunRequest, spec: PipelineSpec, order: list[str], block_id: str) -> str:
    """What an export's STAC items say it came from (orchestrator_svc.stac_out.Lineage): the pipeline, the blocks
    upstream of it, their datasets and their models (without endpoints, which are the mesh's business)."""
    inputs = spec.inputs()
    upstream: set[str] = set()
    todo = list(inputs[block_id])
    while todo:
        source = todo.pop()
        if source not in upstream:
            upstream.add(source)
            todo += inputs[source]
    by_id = {b.id: b for b in spec.blocks}
    steps, datasets, models = [], {}, {}
    for source in (b for b in order if b in upstream):
        block = by_id[source]
        if block.kind == "dataset":
            dataset_id = block.settings.dataset_id
            datasets[dataset_id] = json_format.MessageToDict(request.datasets[dataset_id])
            steps.append(f"dataset {dataset_id}")
        elif block.kind == "model":
            model = pb.ResolvedModel()
            model.CopyFrom(request.models[block.settings.model_id])
            del model.endpoints[:]
            models[block.settings.model_id] = json_format.MessageToDict(model)
            steps.append(f"model {model.model_name}:{model.model_version}")
        else:
            steps.append(block.kind)
    return Lineage(
        request.run_id, block_id, request.pipeline_id, request.pipeline_name, tuple(steps), datasets, models
    ).to_json()


def _item_scopes(request: pb.LaunchRunRequest, spec, order: list[str], inputs: dict[str, list[str]]) -> dict[str, str]:
    """Block id -> the dataset block whose items it runs once per item: a dataset of STAC items and every block
    after it up to a summary (which takes every item's copy at once). Refuses a block fed by two such datasets."""
    by_id = {b.id: b for b in spec.blocks}
    scopes: dict[str, str] = {}
    for block_id in order:
        block = by_id[block_id]
        if block.kind == "dataset":
            if request.datasets[block.settings.dataset_id].items:
                scopes[block_id] = block_id
            continue
        if block.kind == "summary":
            continue
        found = sorted({scopes[s] for s in inputs[block_id] if s in scopes})
        if len(found) > 1:
            index = next(i for i, b in enumerate(spec.blocks) if b.id == block_id)
            raise InvalidArgument(
                [
                    FieldViolation(
                        f"spec.blocks[{index}]",
                        f"block {block_id!r} takes inputs that run once per scene of several datasets "
                        f"({', '.join(found)}); put a summary block between them",
                    )
                ]
            )
        if found:
            scopes[block_id] = found[0]
    return scopes


def _item_config(kind: str, config: dict, item: common.SceneItem, k: int, count: int) -> dict:
    """What a block's copy for one item adds to its config: the item's files (dataset), or names carrying its id."""
    tag = item_tag(item)
    if kind == "dataset":
        by_band = {a.band: a for a in item.assets}  # _check_items saw a file for every band of the dataset
        assets = [by_band[b] for b in config["file_bands"]] if by_band else []
        return {
            "uri": item.uri,
            "assets": [{"band": a.band, "uri": a.uri, "band_index": a.band_index or 1} for a in assets],
            "item_id": item.id,
            "acquired": item.acquired_time.ToJsonString() if item.HasField("acquired_time") else "",
            "item_number": k + 1,
            "item_count": count,
        }
    if kind == "index":
        return {"name": f"{config['name']}_{tag}"}
    if kind == "stitch":
        return {"item": tag}
    if kind == "export":
        return {"item": tag}
    return {}


def build_plan(
    request: pb.LaunchRunRequest,
    *,
    default_batch_size: int,
    default_max_concurrency: int,
    infer_timeout_s: float,
    infer_wait_s: float,
    roots: StorageRoots | None,
    model_host_allowed: Callable[[str], bool] | None = None,
) -> Plan:
    """Check the request's form and graph (INVALID_ARGUMENT) and configure every block. Touches nothing outside.
    With `roots`, every scene and export destination must lie under them, and with `model_host_allowed` every model
    endpoint on an allowed host (LaunchRun; a worker rebuilding the plan of a run launched that way passes None)."""
    violations = _check_resolved(request, roots, model_host_allowed)
    spec = spec_from_proto(request.spec)
    find_dataset, find_model = _catalog_views(request)
    problems, order = validate_spec(spec, find_dataset, find_model, roots=roots)
    violations += [FieldViolation(f"spec.{p.field}", p.description) for p in problems]
    if violations:
        raise InvalidArgument(violations)
    problems = check_runnable(spec, order, find_model, _crs_known)
    if problems:
        raise InvalidArgument([FieldViolation(f"spec.{p.field}", p.description) for p in problems])

    by_id = {b.id: (i, b) for i, b in enumerate(spec.blocks)}
    inputs = spec.inputs()
    op_names = _op_names([b.id for b in spec.blocks])
    scopes = _item_scopes(request, spec, order, inputs)
    plans: list[BlockPlan] = []
    for block_id in order:
        i, block = by_id[block_id]
        config = block.settings
        ports: dict[str, str] = {}
        for source in inputs[block_id]:
            port = KINDS[block.kind].port_for(KINDS[by_id[source][1].kind].produces or "")
            assert port is not None  # validate_spec checked every edge
            ports[port.name] = source
        if block.kind == "dataset":
            resolved = request.datasets[config.dataset_id]
            op_config = {
                "dataset_id": config.dataset_id,
                "uri": resolved.uri,
                "file_bands": list(resolved.bands),
                "bands": list(config.bands),
                "resolution_m": config.resolution_m,
            }
        elif block.kind == "tile":
            size, _ = tile_size_of(spec, block_id, find_model)
            op_config = {
                "tile_size_px": size,
                "overlap_px": config.overlap_px,
                "normalization": config.normalization or "none",
            }
        elif block.kind == "model":
            model = request.models[config.model_id]
            tile_block = by_id[inputs[block_id][0]][1]
            tile_px = tile_block.settings.tile_size_px or model.input.tile_size_px or DEFAULT_TILE_PX
            output = model.outputs[0]
            op_config = {
                "model_id": config.model_id,
                "model_name": model.model_name,
                "model_version": model.model_version,
                "endpoints": list(model.endpoints),
                "bands": [b.lower() for b in model.input.bands],
                "dtype": model.input.dtype.upper(),
                "output": output.name,
                "output_dtype": output.dtype.upper(),
                "output_channels": stitchable_channels(list(output.shape), tile_px) or 1,
                "batch_size": config.batch_size or default_batch_size,
                "max_concurrency": config.max_concurrency or default_max_concurrency,
                "timeout_s": infer_timeout_s,
                "wait_s": infer_wait_s,
            }
        elif block.kind == "stitch":
            op_config = {"blend": config.blend or "mean"}
        elif block.kind == "vectorize":
            op_config = {
                "threshold": config.threshold,
                "simplify_tolerance_m": config.simplify_tolerance_m,
                "min_area_m2": config.min_area_m2,
                "crs": config.crs,
            }
        elif block.kind == "index":
            first, second = config.bands()
            op_config = {"first_band": first, "second_band": second, "name": config.output_name}
        elif block.kind == "summary":
            op_config = {"name": block_id, "threshold": config.threshold, "mosaic": config.mosaic}
        else:  # export
            formats = export_formats(spec, block_id)
            op_config = {
                "run_id": request.run_id, "block_id": block_id, "uri": config.uri, "formats": formats,
                "lineage": _lineage(request, spec, order, block_id),
            }  # fmt: skip
        scope = scopes.get(block_id)
        if scope is None:  # once: its inputs are whole (a summary takes every item's copy of its input)
            wiring = {port: tuple(p.op_name for p in plans if p.id == source) for port, source in ports.items()}
            plans.append(BlockPlan(block_id, i, block.kind, op_names[block_id], op_config, wiring))
            continue
        items = request.datasets[by_id[scope][1].settings.dataset_id].items
        for k, item in enumerate(items):
            tag = item_tag(item)
            copy = {**op_config, **_item_config(block.kind, op_config, item, k, len(items))}
            wiring = {
                port: (f"{op_names[source]}__{k + 1}" if source in scopes else op_names[source],)
                for port, source in ports.items()
            }
            plans.append(BlockPlan(block_id, i, block.kind, f"{op_names[block_id]}__{k + 1}", copy, wiring, item=tag))
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
            assets = block.config.get("assets") or []
            if block.item:
                subject = f'datasets["{block.config["dataset_id"]}"].items[{block.config["item_number"] - 1}]'
            try:
                if assets:
                    for asset in assets:
                        uri = asset["uri"]
                        storage.size(uri)
                    uri = f"item {block.config['item_id']!r}"
                    files = [stacks.BandFile(a["band"], storage.gdal_path(a["uri"]), a["band_index"]) for a in assets]
                    with blocks.gdal_env(**storage.gdal_options(assets[0]["uri"])):
                        stacks.plan_stack(files, block.config["bands"], block.config["resolution_m"])
                else:
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
