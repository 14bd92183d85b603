"""`constellation.yaml`: what a model folder declares, parsed and checked.

    name: ndwi-water                  # lowercase letters, digits, - and _
    version: 1.0.0
    task: segmentation                # classification | segmentation | detection | regression
    entrypoint: model:NdwiWater       # module:Class, the module a .py file inside the folder
    input:
      bands: [green, nir]
      tile_size_px: 256
      dtype: FP32                     # an Open Inference Protocol datatype
      value_range: [0.0, 1.0]
    outputs:
      - {name: water_probability, dtype: FP32, shape: [1, 256, 256]}   # without the batch dimension
    requirements: ["numpy>=1.26"]     # PEP 508; no URLs, paths or pip options
    example_input: example_input.npy  # optional, (N, bands, H, W); used by the smoke test
    resources: {cpu: 1, memory: 512m, gpu: 0}   # optional max_replicas: hosting's autoscaling ceiling
    batching: {max_batch_size: 16, max_queue_delay_ms: 5}
    # optional: max_parallel_batches (predict calls at once; default 1) and
    # max_queued_tiles (tiles admitted at once; default from resources.memory): see model_runtime.admission

`load_manifest` returns every problem at once, each with the field it concerns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

MANIFEST_FILE = "constellation.yaml"
TASKS = ("classification", "segmentation", "detection", "regression")
NUMPY_DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
# Open Inference Protocol datatypes: those numpy holds, and BYTES (which a model may name but not take as a tile).
DATATYPES = frozenset({*NUMPY_DTYPES, "BYTES"})
# A model's name and version, as the catalog, hosting and model images accept them.
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
# An output tensor's name: it names files (the stitched raster, its exports), so never a path.
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENTRYPOINT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")
MEMORY = re.compile(r"^\d+(\.\d+)?[kmgKMG]?$")
MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}  # binary, as Docker reads 512m
FIELDS = {
    "name",
    "version",
    "task",
    "entrypoint",
    "input",
    "outputs",
    "requirements",
    "example_input",
    "resources",
    "batching",
}
INPUT_FIELDS = {"bands", "tile_size_px", "dtype", "value_range"}
OUTPUT_FIELDS = {"name", "dtype", "shape"}
RESOURCE_FIELDS = {"cpu", "memory", "gpu", "max_replicas"}
BATCHING_FIELDS = {"max_batch_size", "max_queue_delay_ms", "max_parallel_batches", "max_queued_tiles"}
# pip installs a requirement spelled like an archive (pkg.whl, pkg.tar.gz) from a local file.
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz")


@dataclass(frozen=True)
class Problem:
    field: str
    description: str


class ManifestError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.description}" for p in problems))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    task: str
    entrypoint: str
    bands: tuple[str, ...]
    tile_size_px: int
    dtype: str
    value_range: tuple[float, float]
    outputs: tuple[TensorSpec, ...]
    requirements: tuple[str, ...] = ()
    example_input: str = ""
    resources: dict = field(default_factory=dict)
    max_batch_size: int = 16
    max_queue_delay_ms: float = 5.0
    max_parallel_batches: int = 0  # 0: derived (model_runtime.admission)
    max_queued_tiles: int = 0  # 0: derived

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-tile input shape (bands, H, W); -1 where the tile size is free."""
        size = self.tile_size_px or -1
        return (len(self.bands), size, size)

    @property
    def module(self) -> str:
        return self.entrypoint.split(":", 1)[0]

    @property
    def class_name(self) -> str:
        return self.entrypoint.split(":", 1)[1]


def check_requirement(text: object, where: str) -> list[Problem]:
    """A PEP 508 requirement naming a package from an index: no URLs, paths, or pip options."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not isinstance(text, str) or not text.strip():
        return [Problem(where, "must be a requirement string such as 'numpy>=1.26'")]
    stripped = text.strip()
    if stripped.startswith("-"):
        return [Problem(where, f"{stripped!r} is a pip option; only package requirements are allowed")]
    if stripped.startswith((".", "/", "~")) or "://" in stripped or stripped.startswith("file:"):
        return [Problem(where, f"{stripped!r} is a path or URL; name a package from the index instead")]
    try:
        requirement = Requirement(stripped)
    except InvalidRequirement as error:
        return [Problem(where, f"{stripped!r} is not a valid requirement: {error}")]
    if requirement.url:
        return [Problem(where, f"{stripped!r} points at a URL; name a package and version instead")]
    if requirement.name.lower().endswith(ARCHIVE_SUFFIXES):
        return [
            Problem(
                where,
                f"{stripped!r} names an archive file, which pip installs from a local path; name the package instead",
            )
        ]
    return []


def check_output_name(name: str) -> str | None:
    """Why `name` cannot name a model output, or None when it can."""
    if not name:
        return "is required"
    if not OUTPUT_NAME.match(name) or ".." in name:
        return (
            f"{name[:80]!r} is not an output name: letters, digits, '_', '.' and '-', starting with a letter or "
            "digit, at most 64, no '..'"
        )
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _inside(folder: Path, relative: str) -> bool:
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts:
        return False
    return (folder / relative).resolve().is_relative_to(folder.resolve())


def parse(data: object, folder: Path) -> Manifest:
    problems: list[Problem] = []

    def problem(where: str, description: str) -> None:
        problems.append(Problem(where, description))

    if not isinstance(data, dict):
        raise ManifestError([Problem("", f"{MANIFEST_FILE} must be a mapping of fields")])
    name, task = data.get("name", ""), data.get("task", "")
    version = "" if data.get("version") is None else str(data["version"])
    if not isinstance(name, str) or not NAME.match(name):
        problem("name", f"{name!r}: lowercase letters, digits, '-' and '_', at most 64")
    if not VERSION.match(version):
        problem("version", f"{version!r}: a version such as 1.0.0 is required")
    if task not in TASKS:
        problem("task", f"{task!r}: one of {', '.join(TASKS)}")

    entrypoint = data.get("entrypoint", "")
    match = ENTRYPOINT.match(entrypoint) if isinstance(entrypoint, str) else None
    if not match:
        problem("entrypoint", f"{entrypoint!r}: write module:Class, e.g. model:WaterModel")
    else:
        module_file = match.group(1).replace(".", "/") + ".py"
        if not _inside(folder, module_file):
            problem("entrypoint", f"module file {module_file} is outside the model folder")
        elif not (folder / module_file).is_file():
            problem("entrypoint", f"module file {module_file} does not exist in the model folder")

    spec = data.get("input") or {}
    bands = spec.get("bands") if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        problem("input", "must be a mapping with bands, tile_size_px, dtype, value_range")
        spec = {}
    if not bands or not isinstance(bands, list) or not all(isinstance(b, str) and b for b in bands):
        problem("input.bands", "list the band names the model reads, e.g. [green, nir]")
        bands = []
    elif len(set(bands)) != len(bands):
        problem("input.bands", "a band is listed twice")
    tile = spec.get("tile_size_px", 0)
    if not _is_int(tile) or tile < 0 or tile > 8192:
        problem("input.tile_size_px", "must be an integer between 0 (any size) and 8192")
        tile = 0
    dtype = str(spec.get("dtype", "")).upper()
    if dtype not in NUMPY_DTYPES:
        problem("input.dtype", f"{spec.get('dtype')!r}: one of {', '.join(NUMPY_DTYPES)}")
    value_range = spec.get("value_range", [0.0, 1.0])
    if not (
        isinstance(value_range, list)
        and len(value_range) == 2
        and all(_is_number(v) for v in value_range)
        and value_range[0] <= value_range[1]
    ):
        problem("input.value_range", "must be [min, max] with min <= max")
        value_range = [0.0, 1.0]

    outputs = []
    raw_outputs = data.get("outputs")
    if not isinstance(raw_outputs, list) or not raw_outputs:
        problem("outputs", "list at least one output tensor: {name, dtype, shape}")
        raw_outputs = []
    seen: set[str] = set()
    for i, item in enumerate(raw_outputs):
        if not isinstance(item, dict):
            problem(f"outputs[{i}]", "must be a mapping {name, dtype, shape}")
            continue
        out_name, out_dtype, shape = item.get("name", ""), str(item.get("dtype", "")).upper(), item.get("shape", [])
        name_problem = check_output_name(out_name) if isinstance(out_name, str) else "is required"
        if name_problem:
            problem(f"outputs[{i}].name", name_problem)
        elif out_name in seen:
            problem(f"outputs[{i}].name", f"{out_name!r} is used twice")
        seen.add(str(out_name))
        if out_dtype not in NUMPY_DTYPES:
            problem(f"outputs[{i}].dtype", f"{item.get('dtype')!r}: one of {', '.join(NUMPY_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_int(d) and (d > 0 or d == -1) for d in shape):
            problem(f"outputs[{i}].shape", "a list of positive dimensions (or -1), without the batch dimension")
            shape = []
        outputs.append(TensorSpec(str(out_name), out_dtype, tuple(shape)))

    requirements = data.get("requirements", []) or []
    if not isinstance(requirements, list):
        problem("requirements", "must be a list of requirement strings")
        requirements = []
    for i, requirement in enumerate(requirements):
        problems.extend(check_requirement(requirement, f"requirements[{i}]"))

    example = data.get("example_input", "") or ""
    if example and (not isinstance(example, str) or not _inside(folder, example) or not (folder / example).is_file()):
        problem("example_input", f"{example!r} is not a file inside the model folder")

    resources = data.get("resources", {}) or {}
    if not isinstance(resources, dict):
        problem("resources", "must be a mapping {cpu, memory, gpu}")
        resources = {}
    if "cpu" in resources and not (_is_number(resources["cpu"]) and resources["cpu"] > 0):
        problem("resources.cpu", "must be a positive number of cores")
    if "memory" in resources and not MEMORY.match(str(resources["memory"])):
        problem("resources.memory", "must look like 512m or 2g")
    if "gpu" in resources and not (_is_int(resources["gpu"]) and resources["gpu"] >= 0):
        problem("resources.gpu", "must be a whole number of GPUs")
    if "max_replicas" in resources and not (
        _is_int(resources["max_replicas"]) and 1 <= resources["max_replicas"] <= 16
    ):
        problem("resources.max_replicas", "must be between 1 and 16 (replicas hosting may scale the model to)")

    batching = data.get("batching", {}) or {}
    if not isinstance(batching, dict):
        problem(
            "batching", "must be a mapping {max_batch_size, max_queue_delay_ms, max_parallel_batches, max_queued_tiles}"
        )
        batching = {}
    max_batch = batching.get("max_batch_size", 16)
    max_delay = batching.get("max_queue_delay_ms", 5)
    if not _is_int(max_batch) or not 1 <= max_batch <= 1024:
        problem("batching.max_batch_size", "must be between 1 and 1024")
        max_batch = 16
    if not _is_number(max_delay) or not 0 <= max_delay <= 1000:
        problem("batching.max_queue_delay_ms", "must be between 0 and 1000")
        max_delay = 5
    max_parallel = batching.get("max_parallel_batches", 0)
    if not _is_int(max_parallel) or not 0 <= max_parallel <= 64:
        problem("batching.max_parallel_batches", "must be between 1 and 64 (0 or absent: 1)")
        max_parallel = 0
    max_queued = batching.get("max_queued_tiles", 0)
    if not _is_int(max_queued) or not 0 <= max_queued <= 65536:
        problem("batching.max_queued_tiles", "must be between 1 and 65536 (0 or absent: from resources.memory)")
        max_queued = 0

    for where, mapping, known in (
        ("", data, FIELDS),
        ("input", spec, INPUT_FIELDS),
        ("resources", resources, RESOURCE_FIELDS),
        ("batching", batching, BATCHING_FIELDS),
        *((f"outputs[{i}]", item, OUTPUT_FIELDS) for i, item in enumerate(raw_outputs) if isinstance(item, dict)),
    ):
        for key in sorted(map(str, set(mapping) - known)):
            problem(
                f"{where}.{key}" if where else key,
                f"is not a manifest field; expected one of {', '.join(sorted(known))}",
            )

    if problems:
        raise ManifestError(problems)
    return Manifest(
        name=name,
        version=version,
        task=task,
        entrypoint=entrypoint,
        bands=tuple(bands),
        tile_size_px=tile,
        dtype=dtype,
        value_range=(float(value_range[0]), float(value_range[1])),
        outputs=tuple(outputs),
        requirements=tuple(r.strip() for r in requirements),
        example_input=example,
        resources=dict(resources),
        max_batch_size=max_batch,
        max_queue_delay_ms=float(max_delay),
        max_parallel_batches=max_parallel,
        max_queued_tiles=max_queued,
    )


def memory_bytes(memory: str) -> int:
    """A memory size as constellation.yaml writes it (512m, 2g, 1.5g) in bytes."""
    if not MEMORY.match(memory):
        raise ValueError(f"{memory!r} is not a memory size such as 512m or 2g")
    unit = memory[-1].lower() if memory[-1].isalpha() else ""
    return int(float(memory[: len(memory) - len(unit)]) * MEMORY_UNITS[unit])


def load_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError([Problem(MANIFEST_FILE, f"no {MANIFEST_FILE} in {folder}")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ManifestError([Problem(MANIFEST_FILE, f"is not valid YAML: {error}")]) from None
    return parse(data, folder)
