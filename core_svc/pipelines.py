"""Pipeline graph validation.

A spec is valid when its blocks and edges form a DAG in which every edge
carries data its target accepts, every block gets the inputs it needs and
feeds something, and every dataset and model it names exists (with the
bands the model reads). Problems are collected, not raised, so an editor can
mark every bad block and edge at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from graphlib import CycleError, TopologicalSorter

from core_svc.domain import BLOCK_KINDS, Dataset, Model, PipelineSpec, Problem
from core_svc.validation import check_bands, check_storage_uri

BLOCK_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# What each block kind produces, and which inputs (by data kind) it takes.
OUTPUT_KIND = {
    "dataset": "scene",
    "tile": "tiles",
    "model": "predictions",
    "stitch": "raster",
    "vectorize": "vectors",
    "export": None,
}
ACCEPTS = {
    "dataset": set(),
    "tile": {"scene"},
    "model": {"tiles"},
    "stitch": {"predictions"},
    "vectorize": {"raster"},
    "export": {"raster", "vectors"},
}


def _bridge(carried: str, target_kind: str) -> list[str]:
    """Block kinds that would fit between a producer of `carried` and a `target_kind` block."""
    return sorted(k for k, accepts in ACCEPTS.items() if carried in accepts and OUTPUT_KIND[k] in ACCEPTS[target_kind])


def validate_spec(
    spec: PipelineSpec,
    find_dataset: Callable[[str], Dataset | None],
    find_model: Callable[[str], Model | None],
) -> tuple[list[Problem], list[str]]:
    """Every problem in `spec`, and (when there are none) a topological order of its blocks."""
    problems: list[Problem] = []
    if not spec.blocks:
        return [Problem("blocks", "a pipeline needs at least a dataset, tile, model, stitch and export block")], []

    blocks = {}
    for i, block in enumerate(spec.blocks):
        where = f"blocks[{i}]"
        if not BLOCK_ID.match(block.id):
            problems.append(Problem(f"{where}.id", f"{block.id!r} is not a block id: lowercase letters, digits, '-' and '_'", block.id))
            continue
        if block.id in blocks:
            problems.append(Problem(f"{where}.id", f"block id {block.id!r} is used twice", block.id))
            continue
        if block.kind not in BLOCK_KINDS:
            problems.append(Problem(f"{where}.config", f"block {block.id!r} has no config: set one of {', '.join(BLOCK_KINDS)}", block.id))
            continue
        blocks[block.id] = (i, block)

    inputs: dict[str, list[str]] = {b: [] for b in blocks}
    outputs: dict[str, list[str]] = {b: [] for b in blocks}
    seen_edges: set[tuple[str, str]] = set()
    graph: dict[str, list[str]] = {b: [] for b in blocks}  # every edge between known blocks, for cycle detection
    for j, edge in enumerate(spec.edges):
        where = f"edges[{j}]"
        missing = [(name, value) for name, value in (("source_block_id", edge.source), ("target_block_id", edge.target)) if value not in blocks]
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
        carried = OUTPUT_KIND[source_kind]
        if carried is None:
            problems.append(Problem(where, f"{source_kind} block {edge.source!r} produces nothing to pass on", edge.source, j))
            continue
        if carried not in ACCEPTS[target_kind]:
            wanted = " or ".join(sorted(ACCEPTS[target_kind])) or "nothing (it is a source)"
            bridge = _bridge(carried, target_kind)
            hint = f"; put a {' or '.join(bridge)} block between them" if bridge else ""
            problems.append(
                Problem(
                    where,
                    f"{source_kind} block {edge.source!r} produces {carried}, but {target_kind} block {edge.target!r} takes {wanted}{hint}",
                    edge.target,
                    j,
                )
            )
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
        problems += _check_config(block_id, i, block.kind, block.config, find_dataset, find_model)

    kinds = {block.kind for _, block in blocks.values()}
    for needed in ("dataset", "export"):
        if needed not in kinds:
            problems.append(Problem("blocks", f"a pipeline needs at least one {needed} block"))

    if not problems:
        problems += _check_bands_reach_models(blocks, inputs, find_dataset, find_model)
    return problems, (order if not problems else [])


def _check_wiring(block_id: str, i: int, kind: str, ins: list[str], outs: list[str], blocks: dict) -> list[Problem]:
    where = f"blocks[{i}]"
    found = []
    if kind != "dataset" and not ins:
        wanted = " or ".join(sorted(ACCEPTS[kind]))
        found.append(Problem(where, f"{kind} block {block_id!r} has no input; connect a block that produces {wanted}", block_id))
    if kind not in ("export",) and kind != "dataset" and len(ins) > 1:
        found.append(Problem(where, f"{kind} block {block_id!r} takes one input but has {len(ins)}: {', '.join(ins)}", block_id))
    if kind == "export":
        carried = [OUTPUT_KIND[blocks[s][1].kind] for s in ins]
        for data_kind in set(carried):
            if carried.count(data_kind) > 1:
                found.append(Problem(where, f"export block {block_id!r} has more than one {data_kind} input", block_id))
    elif not outs:
        found.append(Problem(where, f"the output of {kind} block {block_id!r} is not used; connect it onwards (it must reach an export block)", block_id))
    return found


def _check_config(block_id, i, kind, config, find_dataset, find_model) -> list[Problem]:  # type: ignore[no-untyped-def]
    where = f"blocks[{i}].{kind}"
    found: list[Problem] = []

    def problem(field: str, description: str) -> None:
        found.append(Problem(f"{where}.{field}", description, block_id))

    if kind == "dataset":
        dataset_id = config.get("dataset_id", "")
        dataset = find_dataset(dataset_id) if dataset_id else None
        if not dataset_id:
            problem("dataset_id", "is required: the id of a dataset in the catalog")
        elif dataset is None:
            problem("dataset_id", f"no dataset has id {dataset_id!r}")
        bands = config.get("bands", [])
        for v in check_bands(bands, "bands", required=False):
            problem(v.field, v.description)
        if dataset is not None:
            for j, band in enumerate(bands):
                if band not in dataset.bands:
                    problem(f"bands[{j}]", f"dataset {dataset.name!r} has no band {band!r}; it has {', '.join(dataset.bands)}")
    elif kind == "tile":
        size, overlap = config.get("tile_size_px", 0), config.get("overlap_px", 0)
        if size < 0 or size > 8192:
            problem("tile_size_px", "must be between 0 (the model's tile size) and 8192")
        if overlap < 0 or (size and 2 * overlap >= size):
            problem("overlap_px", "must be at least 0 and less than half of tile_size_px")
    elif kind == "model":
        model_id = config.get("model_id", "")
        if not model_id:
            problem("model_id", "is required: the id of a model in the catalog")
        elif find_model(model_id) is None:
            problem("model_id", f"no model has id {model_id!r}")
        if not 0 <= config.get("batch_size", 0) <= 1024:
            problem("batch_size", "must be between 0 (server default) and 1024")
        if not 0 <= config.get("max_concurrency", 0) <= 64:
            problem("max_concurrency", "must be between 0 (server default) and 64")
    elif kind == "vectorize":
        for name in ("threshold", "simplify_tolerance_m", "min_area_m2"):
            value = config.get(name, 0.0)
            if not math.isfinite(value) or (name != "threshold" and value < 0):
                problem(name, "must be a finite number" + (" of at least 0" if name != "threshold" else ""))
    elif kind == "export":
        for v in check_storage_uri(config.get("uri", ""), "uri", object_key_required=False):
            problem(v.field, v.description)
    return found


def _check_bands_reach_models(blocks, inputs, find_dataset, find_model) -> list[Problem]:  # type: ignore[no-untyped-def]
    """A model must get the bands it reads from the dataset upstream of its tile block."""
    found = []
    for block_id, (i, block) in blocks.items():
        if block.kind != "model":
            continue
        model = find_model(block.config["model_id"])
        tile_id = inputs[block_id][0]
        tile = blocks[tile_id][1]
        dataset_block = blocks[inputs[tile_id][0]][1]
        dataset = find_dataset(dataset_block.config["dataset_id"])
        available = dataset_block.config.get("bands") or dataset.bands
        missing = [b for b in model.input.bands if b not in available]
        if missing:
            found.append(
                Problem(
                    f"blocks[{i}].model.model_id",
                    f"model {model.name!r} reads bands {', '.join(model.input.bands)}, but dataset block "
                    f"{dataset_block.id!r} provides {', '.join(available)} (missing {', '.join(missing)})",
                    block_id,
                )
            )
        size = tile.config.get("tile_size_px", 0)
        if size and model.input.tile_size_px and size != model.input.tile_size_px:
            found.append(
                Problem(
                    f"blocks[{blocks[tile_id][0]}].tile.tile_size_px",
                    f"model {model.name!r} takes {model.input.tile_size_px}px tiles, but tile block {tile_id!r} cuts {size}px; use {model.input.tile_size_px} or 0",
                    tile_id,
                )
            )
    return found
