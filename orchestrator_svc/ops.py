"""The block kinds as Dagster ops with typed config. Each op is a thin shell around `blocks`.

Ops pass small references (paths and metadata) to each other, never pixel
arrays: rasters and predictions stay on disk under the run's scratch folder
(`ConstellationResource.work_dir/<run_id>/<op>`), so the IO manager moves a
few hundred bytes per step whatever the scene's size.

The model op is the one that talks to the network: a full or restarting
endpoint (RESOURCE_EXHAUSTED, UNAVAILABLE) is waited for and retried request
by request, with jitter, inside the step (clients.inference.run, for up to
`wait_s` without an answer), with fewer requests in flight while the endpoint
refuses them; a transient failure that outlasts it is raised as it is, for the
job's RetryPolicy to retry (it resumes from the tiles already predicted);
permanent ones raise Failure(allow_retries=False) with the endpoint's message.
"""

# No `from __future__ import annotations`: Dagster reads the ops' config and input types from real annotations.
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from dagster import (
    AssetKey,
    AssetMaterialization,
    Config,
    ConfigurableResource,
    DagsterRunStatus,
    Failure,
    OpExecutionContext,
    op,
)
from dagster._core.errors import DagsterExecutionInterruptedError

from clients.inference import EndpointError, InferenceClient
from clients.roots import Purpose, StorageRoots
from clients.storage import Storage, StorageError, join
from orchestrator_svc import blocks, series, stac_out, stacks
from orchestrator_svc.events import output_metadata, progress_message

PROGRESS_EVERY_S = 1.0  # each progress line is an event-log write
MEDIA_TYPES = {
    "cog": "image/tiff; application=geotiff; profile=cloud-optimized",
    "geojson": "application/geo+json",
    "png_preview": "image/png",
    "csv": "text/csv",
    "json": "application/json",
}


class ConstellationResource(ConfigurableResource):
    """Where a run keeps scratch files, how it reaches object storage, and where it may read and write
    (the roots LaunchRun checked the run against, checked again right before each read and write, since a
    symlink may have changed since)."""

    work_dir: str
    s3_endpoint_url: str = ""
    confined: bool = False  # False: a run launched before the roots were stored with it
    data_roots: list[str] = []
    export_roots: list[str] = []
    s3_buckets: list[str] = []

    def storage(self) -> Storage:
        return Storage(self.s3_endpoint_url)

    def refusal(self, uri: str, purpose: Purpose) -> str | None:
        if not self.confined:
            return None
        roots = StorageRoots(
            data_roots_raw=",".join(self.data_roots),
            export_roots_raw=",".join(self.export_roots),
            s3_buckets_raw=",".join(self.s3_buckets),
        )
        refusal = roots.refusal(uri, purpose)
        return f"{uri} {refusal}" if refusal else None

    def scratch(self, run_id: str, *parts: str) -> Path:
        path = Path(self.work_dir, run_id, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


# --------------------------------------------------------------------------- what flows between ops


@dataclass(frozen=True)
class TilePlan:
    scene: blocks.Scene
    grid: blocks.TileGrid
    normalization: str
    stats: dict  # band -> blocks.BandStats (only for min_max / z_score)


@dataclass(frozen=True)
class Predictions:
    tiles: TilePlan
    folder: str  # holds the PredictionStore
    bands: tuple[str, ...]  # the bands the model read (their nodata is the output's nodata)
    channels: int
    name: str  # the model output's name
    backdrop_means: str = ""  # the preview's backdrop summed as the tiles were read (blocks.BackdropSums), or ""


class Prefetcher:
    """Runs an iterator in a thread of its own, `depth` items ahead of the consumer; its errors reach the consumer."""

    _END = object()

    def __init__(self, source, depth: int = 2) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), name="tile-reader", daemon=True)
        self._thread.start()

    def _fill(self, source) -> None:
        import queue

        try:
            for item in source:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            item = self._END
        except BaseException as error:  # handed to the consumer
            item = error
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        import queue

        while True:
            try:
                item = self._queue.get(timeout=0.1)  # short waits keep a cancel (SIGINT) prompt
            except queue.Empty:
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PredictionWriter:
    """Writes predictions to the store from a thread of its own, so waiting on the disk never holds up
    sending the next request. At most `depth` answers wait; the first write error is raised in the caller."""

    def __init__(self, store: blocks.PredictionStore, depth: int = 4) -> None:
        import queue
        import threading

        self.store = store
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._drain, name="prediction-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            chunk, raw = item
            try:
                if chunk == list(range(chunk[0], chunk[0] + len(chunk))):
                    self.store.write_run(chunk[0], raw)
                else:
                    size = self.store.record_bytes
                    for j, index in enumerate(chunk):
                        self.store.write(index, raw[j * size : (j + 1) * size])
            except BaseException as error:  # handed to the caller
                self.error = error

    def put(self, chunk: list[int], raw: memoryview) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((chunk, raw))

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


@dataclass
class EarlyExport:
    """Export work on a stitched raster started by the stitch step: its COG and the preview's backdrop."""

    cog: "Future[Path] | None" = None
    backdrop: "Future[np.ndarray] | None" = None


# raster path -> the work started on it. In-process runs only: the steps share this process, and the export
# step takes the entry (a re-executed or multiprocess export finds none and does the work itself).
_EARLY: dict[str, EarlyExport] = {}
_EARLY_POOL = ThreadPoolExecutor(2, thread_name_prefix="early-export")


def _write_cog(source: Path, target: Path) -> Path:
    blocks.write_cog(source, target)
    return target


def _backdrop(raster: blocks.RasterFile, shape: tuple[int, int]) -> np.ndarray:
    """The preview's backdrop: the model step's sums when it left them for this shape, else read from the scene."""
    if raster.backdrop_means:
        summed = np.load(raster.backdrop_means)
        if summed.shape == (3, *shape):
            return summed
    return blocks.read_backdrop(raster.backdrop_path, raster.backdrop_bands, shape)


def _export_work(raster: blocks.RasterFile, wanted: list[str], folder: Path) -> EarlyExport:
    """The raster's COG (written under `folder`) and its preview's backdrop (a decimated read of the whole scene),
    started in threads: both release the GIL, so they cost about the longer of the two, not their sum."""
    work = EarlyExport()
    if "cog" in wanted:
        cog = _scratch_file(folder, f"{raster.name}.tif")
        work.cog = _EARLY_POOL.submit(_write_cog, Path(raster.path), cog)
    if "png_preview" in wanted and raster.backdrop_path and len(raster.backdrop_bands) == 3:
        shape = blocks.preview_shape(raster.width, raster.height)
        work.backdrop = _EARLY_POOL.submit(_backdrop, raster, shape)
    return work


def start_early_export(raster: blocks.RasterFile, wanted: list[str], folder: Path) -> None:
    """_export_work started by the stitch step, for export_op to take."""
    _EARLY[raster.path] = _export_work(raster, wanted, folder)


# --------------------------------------------------------------------------- configs


class AssetConfig(Config):
    band: str
    uri: str
    band_index: int = 1


class DatasetConfig(Config):
    dataset_id: str
    uri: str  # a stacked raster; empty for an item read from `assets`
    file_bands: list[str]
    bands: list[str] = []
    resolution_m: float = 0.0
    assets: list[AssetConfig] = []  # one file per band (a STAC item): stacked on one grid by stacks.write_vrt
    item_id: str = ""  # one copy of the block per item of a dataset of STAC items
    acquired: str = ""
    item_number: int = 0
    item_count: int = 0


class TileConfig(Config):
    tile_size_px: int
    overlap_px: int = 0
    normalization: str = "none"


class ModelConfig(Config):
    model_id: str
    model_name: str
    model_version: str = ""
    endpoints: list[str]
    bands: list[str]
    dtype: str = "FP32"
    output: str
    output_dtype: str = "FP32"
    output_channels: int = 1
    batch_size: int = 8
    max_concurrency: int = 2
    timeout_s: float = 60.0
    wait_s: float = 30.0  # how long transient failures are retried inside the step (clients.inference.run)


class StitchConfig(Config):
    blend: str = "mean"
    item: str = ""  # the raster's name carries it
    # What a downstream export wants of this raster ("cog", "png_preview"): started in a thread as soon as the
    # raster is written, so it runs beside the vectorize step (jobs.run_config; in-process runs only).
    prepare: list[str] = []


class VectorizeConfig(Config):
    threshold: float = 0.5
    simplify_tolerance_m: float = 0.0
    min_area_m2: float = 0.0
    crs: str = ""


class IndexConfig(Config):
    first_band: str
    second_band: str
    name: str  # the raster's name, e.g. "ndwi"


class SummaryConfig(Config):
    name: str  # the outputs' name (the block's id)
    threshold: float = 0.0
    mosaic: bool = False


class ExportConfig(Config):
    run_id: str  # the mesh's run id (files go under <uri>/<run_id>/<block_id>/, or .../<block_id>/<item>/)
    block_id: str
    uri: str
    formats: list[str]
    lineage: str = ""  # stac_out.Lineage as JSON: what the run's STAC items say the outputs came from
    item: str = ""  # one copy of the block per STAC item


def _fail(message: str) -> Failure:
    return Failure(description=message, allow_retries=False)


def _confine(constellation: ConstellationResource, uri: str, purpose: Purpose, what: str = "") -> None:
    refusal = constellation.refusal(uri, purpose)
    if refusal:
        raise _fail(what + refusal)


def _scratch_file(folder: Path, name: str) -> Path:
    """`folder/name`, for a name that comes from the spec or a model (an output's name): refused unless it stays
    a plain file of `folder`, so an output named `../../x` cannot write outside the run's scratch folder."""
    path = folder / name
    if not name or path.resolve().parent != folder.resolve():
        raise _fail(f"{name[:80]!r} cannot name a file: use letters, digits, '_', '.' and '-'")
    return path


# --------------------------------------------------------------------------- ops


@op(name="dataset", description="Ingest a GeoTIFF/COG scene, or a STAC item's band files, and select its bands.")
def dataset_op(
    context: OpExecutionContext, config: DatasetConfig, constellation: ConstellationResource
) -> blocks.Scene:
    storage = constellation.storage()
    item = (
        f"item {config.item_number} of {config.item_count} ({config.item_id}, {config.acquired or 'no date'}): "
        if config.item_id
        else ""
    )
    where = f"dataset {config.dataset_id!r} " + (item or f"({config.uri}): ")
    scratch = constellation.scratch(context.run_id, context.op.name)
    try:
        if config.assets:
            files = []
            for k, asset in enumerate(config.assets):
                _confine(constellation, asset.uri, "data", where)
                path = storage.fetch(asset.uri, scratch / f"asset-{k}")
                files.append(stacks.BandFile(asset.band, str(path), asset.band_index))
            plan = stacks.plan_stack(files, config.bands, config.resolution_m)
            scene = stacks.write_vrt(plan, scratch / "scene.vrt")
            context.log.info(
                f"{item}{len(files)} band files onto one {plan.width}x{plan.height} px grid "
                f"of {plan.resolution:g} CRS units: "
                + ", ".join(
                    f"{s.file.band} {stacks.resampling_for(s.file.band, s.transform[0], plan.resolution)}"
                    for s in plan.sources
                    if s.file.band in scene.band_names
                )
            )
        else:
            _confine(constellation, config.uri, "data", where)
            path = storage.fetch(config.uri, scratch)
            scene = blocks.inspect_scene(str(path), config.file_bands, config.bands)
    except (StorageError, blocks.RasterError) as error:
        raise _fail(f"{where}{error}") from None
    if config.item_id:
        scene = replace(scene, item_id=config.item_id, acquired=config.acquired)
    context.log.info(
        f"{item}scene {scene.width}x{scene.height} px, bands {', '.join(scene.band_names)}, "
        f"{scene.dtype}, nodata {scene.nodata}"
    )
    return scene


@op(name="tile", description="Cut the scene into model-sized tiles (size, overlap, normalisation).")
def tile_op(context: OpExecutionContext, config: TileConfig, scene: blocks.Scene) -> TilePlan:
    grid = blocks.TileGrid.for_scene(scene.width, scene.height, config.tile_size_px, config.overlap_px)
    stats = blocks.band_statistics(scene) if config.normalization in ("min_max", "z_score") else {}
    context.log.info(
        f"{grid.count} tiles of {grid.size}px ({len(grid.xs)}x{len(grid.ys)}), overlap {grid.overlap}px, "
        f"normalization {config.normalization}"
    )
    return TilePlan(scene, grid, config.normalization, stats)


class RetryLog:
    """Says in the run's log that requests are being retried: the first time, then at most every
    PROGRESS_EVERY_S (an endpoint refusing many requests would otherwise flood the event log)."""

    def __init__(self, context: OpExecutionContext) -> None:
        self.context, self.count, self._said_at = context, 0, 0.0

    def heard(self, error: EndpointError, wait_s: float) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._said_at >= PROGRESS_EVERY_S:
            self._said_at = now
            self.context.log.info(f"{error}; retrying in {wait_s:.1f}s ({self.count} requests retried so far)")


@op(
    name="model",
    description="Run a model endpoint over the tiles (Open Inference Protocol, batched, bounded concurrency).",
)
def model_op(
    context: OpExecutionContext, config: ModelConfig, tiles: TilePlan, constellation: ConstellationResource
) -> Predictions:
    grid, scene = tiles.grid, tiles.scene
    run = context.instance.get_run_by_id(context.run_id)
    if run is not None and run.status == DagsterRunStatus.CANCELING:
        raise _fail("the run is being canceled; not trying the model step again")
    folder = constellation.scratch(context.run_id, context.op.name)
    store = blocks.PredictionStore(folder, grid.count, config.output_channels, grid.size)
    try:
        done_flags = store.done()
        todo = [k for k in range(grid.count) if not done_flags[k]]
        done = grid.count - len(todo)
        if done:
            context.log.info(f"resuming: {done} of {grid.count} tiles were predicted by an earlier attempt")
        normalizer = blocks.Normalizer.build(tiles.normalization, config.bands, tiles.stats)
        expected = [config.output_channels, grid.size, grid.size]
        started, cpu_started, resumed_at = time.monotonic(), time.process_time(), done
        context.log.info(progress_message(done, grid.count, "tiles"))
        last_report = time.monotonic()
        with (
            InferenceClient(
                config.endpoints,
                config.model_name,
                config.model_version,
                input_dtype=config.dtype,
                output_name=config.output,
                timeout_s=config.timeout_s,
            ) as client,
            blocks.TileReader(scene, grid, config.bands, normalizer, config.dtype) as reader,
            PredictionWriter(store) as writer,
        ):
            client.describe()
            chunks = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
            buffer = np.empty((config.batch_size, len(config.bands), grid.size, grid.size), dtype=np.float32)
            # Tiles are read and framed in a thread of its own (GDAL and numpy release the GIL), so this
            # thread only sends requests and hands answers to the writer.
            frames = ((chunk, client.frame(reader.read(chunk, out=buffer))) for chunk in chunks)
            with Prefetcher(frames) as requests:
                retrying = RetryLog(context)
                answers = client.run(
                    requests, config.max_concurrency, retry_for_s=config.wait_s, on_retry=retrying.heard
                )
                for chunk, raw, datatype, shape in answers:
                    per_tile = shape[1:] if len(shape) == 4 else [1, *shape[1:]]
                    if shape[0] != len(chunk) or per_tile != expected:
                        raise _fail(
                            f"model {config.model_name!r} returned {config.output!r} of shape {shape} for "
                            f"{len(chunk)} tiles; expected [{len(chunk)}, {', '.join(map(str, expected))}]"
                        )
                    if datatype != "FP32":
                        raw = memoryview(
                            np.frombuffer(raw, dtype=np.dtype(blocks.NUMPY_DTYPES[datatype]).newbyteorder("<"))
                            .astype("<f4")
                            .tobytes()
                        )
                    writer.put(chunk, raw)
                    done += len(chunk)
                    now = time.monotonic()
                    if now - last_report >= PROGRESS_EVERY_S or done == grid.count:
                        context.log.info(progress_message(done, grid.count, "tiles"))
                        last_report = now
            backdrop = reader.backdrop.means() if reader.backdrop is not None else None
        wall, cpu = time.monotonic() - started, time.process_time() - cpu_started
        context.log.info(
            f"inferred {done - resumed_at} tiles in {wall:.2f}s ({(done - resumed_at) / max(wall, 1e-9):.0f} tiles/s), "
            f"{cpu:.2f}s CPU in this worker" + (f", {retrying.count} requests sent again" if retrying.count else "")
        )
    except EndpointError as error:
        error.args = (f"{config.model_name}:{config.model_version}: {error}",)  # name the model, not only its address
        if error.transient:
            raise  # the RetryPolicy tries again, resuming from the tiles done
        raise _fail(str(error)) from None
    except (DagsterExecutionInterruptedError, KeyboardInterrupt):
        # Dagster turns an interrupt inside a step with a RetryPolicy into a retry; a cancel must stop the run.
        raise _fail("the model step was interrupted: the run is being canceled") from None
    finally:
        store.close()
    means = ""
    if backdrop is not None:  # None as well when an earlier attempt read some of the tiles
        np.save(folder / "backdrop.npy", backdrop)
        means = str(folder / "backdrop.npy")
    return Predictions(tiles, str(folder), tuple(config.bands), config.output_channels, config.output, means)


@op(name="stitch", description="Merge tile predictions into one raster with the scene's CRS, transform and nodata.")
def stitch_op(
    context: OpExecutionContext, config: StitchConfig, predictions: Predictions, constellation: ConstellationResource
) -> blocks.RasterFile:
    grid = predictions.tiles.grid
    store = blocks.PredictionStore(Path(predictions.folder), grid.count, predictions.channels, grid.size)
    try:
        scene = predictions.tiles.scene
        name = f"{predictions.name}_{config.item}" if config.item else predictions.name
        out = _scratch_file(constellation.scratch(context.run_id, context.op.name), f"{name}.tif")
        raster = blocks.stitch(store, grid, scene, predictions.bands, config.blend, out, name)
        raster = replace(
            raster, item_id=scene.item_id, acquired=scene.acquired, backdrop_means=predictions.backdrop_means
        )
    finally:
        store.close()
    context.log.info(f"stitched {raster.width}x{raster.height} px, {raster.count} band(s), blend {config.blend}")
    if config.prepare:
        start_early_export(raster, config.prepare, constellation.scratch(context.run_id, context.op.name, "cog"))
    return raster


@op(name="vectorize", description="Turn the raster into polygons (threshold, simplification, minimum area, CRS).")
def vectorize_op(
    context: OpExecutionContext,
    config: VectorizeConfig,
    raster: blocks.RasterFile,
    constellation: ConstellationResource,
) -> blocks.VectorFile:
    out = _scratch_file(constellation.scratch(context.run_id, context.op.name), f"{raster.name}_polygons.geojson")
    vectors = blocks.vectorize(
        raster,
        config.threshold,
        config.simplify_tolerance_m,
        config.min_area_m2,
        config.crs,
        out,
        f"{raster.name}_polygons",
    )
    context.log.info(
        f"{vectors.features} polygon(s) in {vectors.crs}"
        + (
            f"; strips polygonised in {vectors.processes} processes (peak {vectors.peak_strip_kib / 1024:.0f} MiB each)"
            if vectors.processes > 1
            else ""
        )
    )
    return vectors


@op(
    name="index",
    description="Band math: the normalized difference of two bands, as a float32 raster on the scene's grid.",
)
def index_op(
    context: OpExecutionContext, config: IndexConfig, scene: blocks.Scene, constellation: ConstellationResource
) -> blocks.RasterFile:
    out = _scratch_file(constellation.scratch(context.run_id, context.op.name), f"{config.name}.tif")
    started = time.monotonic()
    raster = blocks.normalized_difference(scene, config.first_band, config.second_band, out, config.name)
    raster = replace(raster, item_id=scene.item_id, acquired=scene.acquired)
    context.log.info(
        f"{config.name} = ({config.first_band} - {config.second_band}) / ({config.first_band} + {config.second_band}): "
        f"{raster.width}x{raster.height} px in {time.monotonic() - started:.2f}s"
    )
    return raster


def _stac_documents(config: ExportConfig, files: list[tuple[Path, str, str]], uris: list[str], local: Path,
                    prefix: str) -> list[tuple[Path, str, str]]:  # fmt: skip
    """The export's STAC Items (stac_out), written under `local`: (path, output name, media type)."""
    lineage = stac_out.Lineage.from_json(config.run_id, config.block_id, config.lineage, _software_version())
    sources = stac_out.scene_sources(lineage.datasets) or [stac_out.SceneSource(config.run_id, "")]
    outputs = tuple(
        stac_out.OutputFile(path, uri, name, fmt) for (path, name, fmt), uri in zip(files, uris, strict=True)
    )
    scenes = [stac_out.SceneOutputs(sources[0], outputs, tuple(sources))]
    written = []
    for name, document, media_type in stac_out.build(scenes, lineage, prefix):
        path = _scratch_file(local, name)
        path.write_text(json.dumps(document, indent=2))
        written.append((path, name.removesuffix(".json").replace("-", "_") + "_stac", media_type))
    return written


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("constellation")
    except PackageNotFoundError:
        return "unknown"


@op(
    name="summary",
    description="Sum a raster up over every scene of the run: a time series (CSV, JSON) and optionally a mosaic.",
)
def summary_op(
    context: OpExecutionContext,
    config: SummaryConfig,
    raster: list[blocks.RasterFile],  # one per scene (named as its port, as every op's input is)
    constellation: ConstellationResource,
) -> series.Table:
    folder = constellation.scratch(context.run_id, context.op.name)
    _scratch_file(folder, f"{config.name}.csv")
    try:
        table = series.summarize(raster, config.threshold, folder, config.name, config.mosaic)
    except blocks.RasterError as error:
        raise _fail(f"summary {config.name!r}: {error}") from None
    context.log.info(progress_message(len(raster), len(raster), "scenes"))
    context.log.info(
        f"{config.name}: {table.rows} scene(s), area above {config.threshold:g}"
        + (f", mosaic {table.mosaic.width}x{table.mosaic.height} px" if table.mosaic else "")
    )
    return table


@op(name="export", description="Write COG GeoTIFF, GeoJSON, a PNG preview and their STAC Items to file:// or s3://.")
def export_op(
    context: OpExecutionContext,
    config: ExportConfig,
    constellation: ConstellationResource,
    raster: blocks.RasterFile | None = None,
    vectors: blocks.VectorFile | None = None,
    table: series.Table | None = None,
) -> None:
    """Writes every file locally, uploads them and their STAC Items (stac_out), then writes manifest.json last.
    Only then are the outputs reported (AssetMaterialization); if anything fails or the run is canceled part-way,
    what was uploaded is deleted again, so a partial export is never published as if complete."""
    storage = constellation.storage()
    _confine(constellation, config.uri, "export")
    per_item = [config.item] if config.item else []  # each item's copy of the block has folders of its own
    local = constellation.scratch(context.run_id, config.block_id, *per_item)
    prefix = join(config.uri, config.run_id, config.block_id, *per_item)
    files: list[tuple[Path, str, str]] = []  # (local path, output name, format)
    wanted = [f for f in ("cog", "png_preview") if f in config.formats]
    if raster is not None and wanted:
        # The stitch step may have started the work already (start_early_export), beside the vectorize step;
        # what it did not start is started here.
        early = _EARLY.pop(raster.path, None) or EarlyExport()
        started = {"cog": early.cog, "png_preview": early.backdrop}
        own = _export_work(raster, [f for f in wanted if started[f] is None], local)
        if "cog" in wanted:
            waited = time.monotonic()
            cog = (early.cog or own.cog).result()  # type: ignore[union-attr]  # one of the two was started
            if early.cog is not None:
                context.log.info(
                    f"the COG was written beside the steps before; waited {time.monotonic() - waited:.2f}s"
                )
            files.append((cog, raster.name, "cog"))
        if "png_preview" in wanted:
            backdrop = early.backdrop or own.backdrop
            preview = _scratch_file(local, f"{raster.name}_preview.png")
            source = files[0][0] if files else Path(raster.path)  # the COG's overviews make this read cheap
            blocks.write_preview(source, preview, backdrop_rgb=backdrop.result() if backdrop else None)
            files.append((preview, f"{raster.name}_preview", "png_preview"))
    if vectors is not None and "geojson" in config.formats:
        files.append((Path(vectors.path), vectors.name, "geojson"))
    if table is not None:
        if "csv" in config.formats:
            files.append((Path(table.csv_path), table.name, "csv"))
        if "json" in config.formats:
            files.append((Path(table.json_path), table.name, "json"))
        if table.mosaic is not None:  # asked for by the summary block itself
            mosaic = _scratch_file(local, f"{table.mosaic.name}.tif")
            blocks.write_cog(Path(table.mosaic.path), mosaic)
            files.append((mosaic, table.mosaic.name, "cog"))

    published: list[str] = []
    outputs = []
    try:
        for path, name, fmt in files:
            uri = join(prefix, path.name)
            _confine(constellation, uri, "export")  # a link planted under the prefix since is caught here
            storage.put(path, uri, MEDIA_TYPES[fmt])
            published.append(uri)
            outputs.append(output_metadata(name, uri, MEDIA_TYPES[fmt], config.block_id))
        for path, name, media_type in _stac_documents(config, files, list(published), local, prefix):
            uri = join(prefix, path.name)
            _confine(constellation, uri, "export")
            storage.put(path, uri, media_type)
            published.append(uri)
            outputs.append(output_metadata(name, uri, media_type, config.block_id))
        manifest = local / "manifest.json"
        manifest.write_text(
            json.dumps({"run_id": config.run_id, "block_id": config.block_id, "outputs": outputs}, indent=2)
        )
        _confine(constellation, join(prefix, "manifest.json"), "export")
        storage.put(manifest, join(prefix, "manifest.json"), "application/json")
    except BaseException:
        for uri in published:
            try:
                storage.delete(uri)
            except StorageError as error:
                context.log.warning(f"could not remove partial output {uri}: {error}")
        raise
    for output in outputs:
        context.log_event(
            AssetMaterialization(
                asset_key=AssetKey(["constellation", config.block_id, output["name"]]),
                description=f"{output['name']} at {output['uri']}",
                metadata=output,
            )
        )
    context.log.info(f"exported {len(outputs)} file(s) under {prefix}")


OP_DEFS = {
    "dataset": dataset_op, "tile": tile_op, "model": model_op, "stitch": stitch_op, "vectorize": vectorize_op,
    "index": index_op, "summary": summary_op, "export": export_op,
}  # fmt: skip
