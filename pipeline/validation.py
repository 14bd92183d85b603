"""Pipeline graph validation.

A spec is valid when its blocks and edges form a DAG in which every edge
carries data its target accepts, every block gets the inputs it needs and
feeds something, and every dataset and model it names exists (with the
bands the model reads). Problems are collected, not raised, so an editor can
mark every bad block and edge at once.

`validate_spec` is what the catalog checks when a pipeline is saved;
`check_runnable` adds what must hold once the models' shapes are settled,
before a run starts (the orchestrator applies both).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from graphlib import CycleError, TopologicalSorter

from clients.roots import StorageRoots
from pipeline.bands import KNOWN_BANDS, match_bands
from pipeline.kinds import (
    BLOCK_KINDS,
    EXPORT_FORMATS,
    KINDS,
    DatasetConfig,
    ExportConfig,
    IndexConfig,
    ModelConfig,
    SummaryConfig,
    TileConfig,
    VectorizeConfig,
    producers,
)
from pipeline.rules import check_bands, check_storage_uri
from pipeline.spec import Block, DatasetView, ModelView, PipelineSpec, Problem

BLOCK_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_LABEL_CHARS = 128
DEFAULT_TILE_PX = 256

FindDataset = Callable[[str], DatasetView | None]
FindModel = Callable[[str], ModelView | None]


def _bridge(carried: str, target_kind: str) -> list[str]:
    """Block kinds that would fit between a producer of `carried` and a `target_kind` block."""
    target = KINDS[target_kind]
    return sorted(k.name for k in KINDS.values() if carried in k.accepts and k.produces in target.accepts)


def validate_spec(
    spec: PipelineSpec, find_dataset: FindDataset, find_model: FindModel, *, roots: StorageRoots | None = None
) -> tuple[list[Problem], list[str]]:
    """Every problem in `spec`, and (when there are none) a topological order of its blocks. With `roots`, every
    export URI must lie under an allowed export root (clients.roots); the services always pass theirs."""
    problems: list[Problem] = []
    if not spec.blocks:
        return [
            Problem(
                "blocks",
                (
                    "a pipeline needs at least a dataset and an export block, with tile, model and stitch blocks "
                    "or an index block between them"
                ),
            )
        ], []

    blocks: dict[str, tuple[int, Block]] = {}
    for i, block in enumerate(spec.blocks):
        where = f"blocks[{i}]"
        if len(block.label) > MAX_LABEL_CHARS:
            message = f"is {len(block.label)} characters; at most {MAX_LABEL_CHARS}"
            problems.append(Problem(f"{where}.label", message, block.id))
        if not BLOCK_ID.match(block.id):
            message = f"{block.id!r} is not a block id: lowercase letters, digits, '-' and '_'"
            problems.append(Problem(f"{where}.id", message, block.id))
            continue
        if block.id in blocks:
            problems.append(Problem(f"{where}.id", f"block id {block.id!r} is used twice", block.id))
            continue
        if block.kind not in KINDS:
            message = f"block {block.id!r} has no config: set one of {', '.join(BLOCK_KINDS)}"
            problems.append(Problem(f"{where}.config", message, block.id))
            continue
        blocks[block.id] = (i, block)

    inputs: dict[str, list[str]] = {b: [] for b in blocks}
    outputs: dict[str, list[str]] = {b: [] for b in blocks}
    seen_edges: set[tuple[str, str]] = set()
    graph: dict[str, list[str]] = {b: [] for b in blocks}  # every edge between known blocks, for cycle detection
    for j, edge in enumerate(spec.edges):
        where = f"edges[{j}]"
        ends = (("source_block_id", edge.source), ("target_block_id", edge.target))
        missing = [(name, value) for name, value in ends if value not in blocks]
        if missing:
            for name, value in missing:
                problems.append(Problem(f"{where}.{name}", f"no block has id {value!r}", edge_index=j))
            continue
        if edge.source == edge.target:
            problems.append(Problem(where, f"block {edge.source!r} cannot feed itself", edge.source, j))
            continue
        if (edge.source, edge.target) in seen_edges:
            problems.append(Problem(where, f"edge {edge.source!r} -> {edge.target!r} appears twice", edge.target, j))
            continue
        seen_edges.add((edge.source, edge.target))
        graph[edge.target].append(edge.source)
        source_kind, target_kind = blocks[edge.source][1].kind, blocks[edge.target][1].kind
        carried = KINDS[source_kind].produces
        if carried is None:
            message = f"{source_kind} block {edge.source!r} produces nothing to pass on"
            problems.append(Problem(where, message, edge.source, j))
            continue
        accepts = KINDS[target_kind].accepts
        if carried not in accepts:
            wanted = " or ".join(sorted(accepts)) or "nothing (it is a source)"
            bridge = _bridge(carried, target_kind)
            article = "an" if bridge and bridge[0][0] in "aeiou" else "a"
            hint = f"; put {article} {' or '.join(bridge)} block between them" if bridge else ""
            message = (
                f"{source_kind} block {edge.source!r} produces {carried}, but {target_kind} block {edge.target!r} "
                f"takes {wanted}{hint}"
            )
            problems.append(Problem(where, message, edge.target, j))
            continue
        inputs[edge.target].append(edge.source)
        outputs[edge.source].append(edge.target)

    order: list[str] = []
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        cycle = error.args[1]
        problems.append(Problem("edges", f"the edges form a cycle: {' -> '.join(cycle)}", cycle[0]))

    for block_id, (i, block) in blocks.items():
        problems += _check_wiring(block_id, i, block.kind, inputs[block_id], outputs[block_id], blocks)
        problems += _check_config(block_id, i, block, find_dataset, find_model, roots)
        if block.kind == "index":
            problems += _check_index_bands(block_id, i, block, inputs[block_id], blocks, find_dataset)

    kinds = {block.kind for _, block in blocks.values()}
    sources_and_sinks = [k.name for k in KINDS.values() if not k.ports or k.produces is None]
    for needed in sources_and_sinks:
        if needed not in kinds:
            problems.append(Problem("blocks", f"a pipeline needs at least one {needed} block"))

    if not problems:
        problems += _check_bands_reach_models(blocks, inputs, find_dataset, find_model)
    return problems, (order if not problems else [])


def _check_wiring(
    block_id: str, i: int, kind: str, ins: list[str], outs: list[str], blocks: dict[str, tuple[int, Block]]
) -> list[Problem]:
    where = f"blocks[{i}]"
    found = []
    block_kind = KINDS[kind]
    if block_kind.ports and not ins:
        wanted = " or ".join(sorted(block_kind.accepts))
        message = f"{kind} block {block_id!r} has no input; connect a block that produces {wanted}"
        found.append(Problem(where, message, block_id))
    if len(block_kind.ports) == 1 and len(ins) > 1:
        message = f"{kind} block {block_id!r} takes one input but has {len(ins)}: {', '.join(ins)}"
        found.append(Problem(where, message, block_id))
    if len(block_kind.ports) > 1:
        carried = [KINDS[blocks[s][1].kind].produces for s in ins]
        for data_kind in set(carried):
            if carried.count(data_kind) > 1:
                found.append(Problem(where, f"{kind} block {block_id!r} has more than one {data_kind} input", block_id))
    if kind == "export" and len(ins) > 1 and any(blocks[s][1].kind == "summary" for s in ins):
        message = (
            f"export block {block_id!r} takes a summary's table; give the other inputs an export block of their own"
        )
        found.append(Problem(where, message, block_id))
    if block_kind.produces is not None and not outs:
        message = (
            f"the output of {kind} block {block_id!r} is not used; connect it onwards (it must reach an export block)"
        )
        found.append(Problem(where, message, block_id))
    return found


def _check_config(
    block_id: str, i: int, block: Block, find_dataset: FindDataset, find_model: FindModel, roots: StorageRoots | None
) -> list[Problem]:
    kind = block.kind
    where = f"blocks[{i}].{kind}"
    found: list[Problem] = []

    def problem(field: str, description: str) -> None:
        found.append(Problem(f"{where}.{field}", description, block_id))

    config = block.settings
    if isinstance(config, DatasetConfig):
        dataset = find_dataset(config.dataset_id) if config.dataset_id else None
        if not config.dataset_id:
            problem("dataset_id", "is required: the id of a dataset in the catalog")
        elif dataset is None:
            problem("dataset_id", f"no dataset has id {config.dataset_id!r}")
        for v in check_bands(list(config.bands), "bands", required=False):
            problem(v.field, v.description)
        if not (math.isfinite(config.resolution_m) and 0 <= config.resolution_m <= 100_000):
            problem("resolution_m", "must be between 0 (the finest band's) and 100000 metres")
        if dataset is not None:
            for j, band in enumerate(config.bands):
                if not match_bands([band], dataset.bands, near=False).complete:
                    has = ", ".join(dataset.bands)
                    problem(f"bands[{j}]", f"dataset {dataset.name!r} has no band {band!r}; it has {has}")
    elif isinstance(config, TileConfig):
        size, overlap = config.tile_size_px, config.overlap_px
        if size < 0 or size > 8192:
            problem("tile_size_px", "must be between 0 (the model's tile size) and 8192")
        if overlap < 0 or (size and 2 * overlap >= size):
            problem("overlap_px", "must be at least 0 and less than half of tile_size_px")
    elif isinstance(config, ModelConfig):
        if not config.model_id:
            problem("model_id", "is required: the id of a model in the catalog")
        elif find_model(config.model_id) is None:
            problem("model_id", f"no model has id {config.model_id!r}")
        if not 0 <= config.batch_size <= 1024:
            problem("batch_size", "must be between 0 (server default) and 1024")
        if not 0 <= config.max_concurrency <= 64:
            problem("max_concurrency", "must be between 0 (server default) and 64")
    elif isinstance(config, VectorizeConfig):
        for name in ("threshold", "simplify_tolerance_m", "min_area_m2"):
            value = getattr(config, name)
            if not math.isfinite(value) or (name != "threshold" and value < 0):
                problem(name, "must be a finite number" + (" of at least 0" if name != "threshold" else ""))
    elif isinstance(config, IndexConfig):
        if not config.preset:
            names = (("first_band", config.first_band), ("second_band", config.second_band))
            for name, band in names:
                if not band:
                    problem(name, "is required without a preset: a band name such as green or nir")
                else:
                    for v in check_bands([band], name, required=True):
                        problem(name, v.description)
            if config.first_band and config.first_band == config.second_band:
                problem("second_band", f"is the same band as first_band ({config.first_band!r}); the index would be 0")
    elif isinstance(config, SummaryConfig):
        if not math.isfinite(config.threshold):
            problem("threshold", "must be a finite number")
    elif isinstance(config, ExportConfig):
        for v in check_storage_uri(config.uri, "uri", object_key_required=False, roots=roots, purpose="export"):
            problem(v.field, v.description)
    return found


def _check_index_bands(
    block_id: str, i: int, block: Block, ins: list[str], blocks: dict[str, tuple[int, Block]], find_dataset: FindDataset
) -> list[Problem]:
    """The two bands of an index must be in the scene its dataset block reads."""
    if len(ins) != 1 or blocks[ins[0]][1].kind != "dataset":
        return []  # a wiring problem, reported as such
    config: IndexConfig = block.settings
    dataset_block = blocks[ins[0]][1]
    dataset = find_dataset(dataset_block.settings.dataset_id) if dataset_block.settings.dataset_id else None
    if dataset is None:
        return []  # reported at the dataset block
    available = list(dataset_block.settings.bands) or list(dataset.bands)
    first, second = config.bands()
    known = [b for b in (first, second) if b in KNOWN_BANDS]  # unknown ones are reported
    missing = list(match_bands(known, available).missing)
    if not missing:
        return []
    provided = f"dataset block {dataset_block.id!r} provides {', '.join(available)}"
    if config.preset:
        formula = f"({first} - {second}) / ({first} + {second})"
        message = f"{config.preset} = {formula} needs band(s) {', '.join(missing)}, but {provided}"
        return [Problem(f"blocks[{i}].index.preset", message, block_id)]
    fields = (("first_band", first), ("second_band", second))
    return [
        Problem(f"blocks[{i}].index.{name}", f"band {band!r} is not in the scene: {provided}", block_id)
        for name, band in fields
        if band in missing
    ]


def _check_bands_reach_models(
    blocks: dict[str, tuple[int, Block]], inputs: dict[str, list[str]], find_dataset: FindDataset, find_model: FindModel
) -> list[Problem]:
    """A model must get the bands it reads from the dataset upstream of its tile block. Runs on a sound graph."""
    found = []
    for block_id, (i, block) in blocks.items():
        if block.kind != "model":
            continue
        model = find_model(block.settings.model_id)
        tile_id = inputs[block_id][0]
        tile = blocks[tile_id][1]
        dataset_block = blocks[inputs[tile_id][0]][1]
        dataset = find_dataset(dataset_block.settings.dataset_id)
        assert model is not None and dataset is not None  # checked by _check_config
        available = list(dataset_block.settings.bands) or list(dataset.bands)
        missing = match_bands(model.bands, available).missing
        if missing:
            message = (
                f"model {model.name!r} reads bands {', '.join(model.bands)}, but dataset block "
                f"{dataset_block.id!r} provides {', '.join(available)} (missing {', '.join(missing)})"
            )
            found.append(Problem(f"blocks[{i}].model.model_id", message, block_id))
        size = tile.settings.tile_size_px
        if size and model.tile_size_px and size != model.tile_size_px:
            message = (
                f"model {model.name!r} takes {model.tile_size_px}px tiles, but tile block {tile_id!r} cuts {size}px; "
                f"use {model.tile_size_px} or 0"
            )
            found.append(Problem(f"blocks[{blocks[tile_id][0]}].tile.tile_size_px", message, tile_id))
    return found


# --------------------------------------------------------------------------- before a run


def tile_size_of(spec: PipelineSpec, tile_id: str, find_model: FindModel) -> tuple[int, list[int]]:
    """The tile size a tile block cuts: its own, else the one its models take, else DEFAULT_TILE_PX.
    Also every different size its models ask for (more than one is a problem)."""
    by_id = {b.id: b for b in spec.blocks}
    size: int = by_id[tile_id].settings.tile_size_px
    if size:
        return size, []
    sizes: set[int] = set()
    for target in spec.outputs()[tile_id]:
        if by_id[target].kind == "model":
            model = find_model(by_id[target].settings.model_id)
            if model is not None and model.tile_size_px:
                sizes.add(model.tile_size_px)
    return (min(sizes) if sizes else DEFAULT_TILE_PX), sorted(sizes)


def stitchable_channels(shape: tuple[int, ...] | list[int], tile_px: int) -> int | None:
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


def export_formats(spec: PipelineSpec, export_id: str) -> list[str]:
    """The formats an export block writes: those it names, else every one its inputs allow."""
    by_id = {b.id: b for b in spec.blocks}
    named = [f for f in by_id[export_id].settings.formats if f]
    if named or by_id[export_id].settings.formats:
        return sorted(set(named), key=named.index)
    carried = {KINDS[by_id[s].kind].produces for s in spec.inputs()[export_id]}
    return [f for f in ("cog", "png_preview", "geojson", "csv", "json") if EXPORT_FORMATS[f] in carried]


def check_runnable(
    spec: PipelineSpec, order: list[str], find_model: FindModel, crs_known: Callable[[str], bool] | None = None
) -> list[Problem]:
    """What must also hold to run a valid spec (in topological `order`): tile sizes its models agree on, model
    outputs stitch can place, export formats its inputs allow, output CRSs `crs_known` knows."""
    found: list[Problem] = []
    by_id = {b.id: (i, b) for i, b in enumerate(spec.blocks)}
    inputs, outputs = spec.inputs(), spec.outputs()
    for block_id in order:
        i, block = by_id[block_id]
        where = f"blocks[{i}].{block.kind}"
        config = block.settings
        if isinstance(config, TileConfig):
            size, sizes = tile_size_of(spec, block_id, find_model)
            if len(sizes) > 1:
                message = f"the models it feeds take different tile sizes ({sizes}); set one"
                found.append(Problem(f"{where}.tile_size_px", message, block_id))
            if 2 * config.overlap_px >= size:
                message = f"must be less than half of the tile size ({size}px)"
                found.append(Problem(f"{where}.overlap_px", message, block_id))
        elif isinstance(config, ModelConfig):
            model = find_model(config.model_id)
            if model is None or not model.outputs:
                continue
            tile_id = inputs[block_id][0]
            tile_px = by_id[tile_id][1].settings.tile_size_px or model.tile_size_px or DEFAULT_TILE_PX
            output = model.outputs[0]
            stitched = any(by_id[d][1].kind == "stitch" for d in outputs[block_id])
            if stitched and stitchable_channels(output.shape, tile_px) is None:
                message = (
                    f"model {model.name!r} output {output.name!r} has shape {list(output.shape)}; stitch needs a "
                    f"per-pixel output [channels, {tile_px}, {tile_px}]"
                )
                found.append(Problem(f"{where}.model_id", message, block_id))
        elif isinstance(config, VectorizeConfig):
            if config.crs and crs_known is not None and not crs_known(config.crs):
                message = f"{config.crs!r} is not a coordinate reference system PROJ knows, e.g. EPSG:4326"
                found.append(Problem(f"{where}.crs", message, block_id))
        elif isinstance(config, ExportConfig):
            carried = {KINDS[by_id[s][1].kind].produces for s in inputs[block_id]}
            for j, name in enumerate(config.formats):
                if not name:
                    message = "is unspecified; use COG, GEOJSON, PNG_PREVIEW, CSV or JSON"
                    found.append(Problem(f"{where}.formats[{j}]", message, block_id))
                elif EXPORT_FORMATS[name] not in carried:
                    source = " or ".join(producers(EXPORT_FORMATS[name]))
                    message = f"{name} needs a {source} block's output; connect one to {block_id!r}"
                    found.append(Problem(f"{where}.formats[{j}]", message, block_id))
    return found
