"""The orchestrator's figures, each against its baseline in the same run.

    .venv/bin/python bench/orchestrator.py [--rounds 3] [--small 2048] [--large 8192] [--throughput 4096]

Starts the real NDWI KServe V2 endpoint (python -m model_runtime) and the
orchestrator (SQLite Dagster instance in a temp dir), writes 4-band uint16
GeoTIFF scenes (EPSG:32725) window by window, then:

1. Inference step throughput: the model step of a `--throughput`² scene
   (256 px tiles, no overlap, batch 8, 2 requests in flight), tiles /
   (STEP_SUCCEEDED - STEP_STARTED), against a tight client loop sending the
   same tiles (read and normalised beforehand, held in memory) to the same
   endpoint with the same batch size and concurrency. Each pipeline run sits
   between two loop runs (the machine is shared); the figure is the median
   round. Target: pipeline >= 85% of the loop. Also shown: CPU per tile
   (client or worker + endpoint, from /proc and the step's own report), whose
   ratio is what the throughput ratio tends to on a CPU-bound machine, and a
   sequential loop (one request at a time).
2. Event latency: for every event a WatchRun client receives live, its
   receive time minus the time Dagster stamped on the event when writing it
   (same host clock). Target: p95 <= 250 ms.
3. Flat memory: the full pipeline (dataset -> tile -> model -> stitch ->
   vectorize -> export COG + GeoJSON + PNG) on a `--small`² and a `--large`²
   scene; each run is its own worker process, which records its peak RSS
   (VmHWM) on the run as it exits. Target: large <= 1.5x small.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]


from clients.inference import InferenceClient
from constellation.common.v1 import common_pb2 as c
from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from orchestrator_svc import blocks
from orchestrator_svc.launcher import MAX_RSS_TAG
from orchestrator_svc.runs import dagster_run_id
from tests.orchestrator_scenes import BANDS, write_scene
from tests.orchestrator_support import NDWI_DIR, ModelEndpoint, Orchestrator, orchestrator_env, water_request

BATCH, CONCURRENCY, TILE = 8, 2, 256


def raster_only(request: pb.LaunchRunRequest) -> pb.LaunchRunRequest:
    """dataset -> tile -> model -> stitch -> export (COG): the throughput runs skip vectors and previews."""
    keep = {"scene", "tiles", "water", "mosaic", "out-0"}
    spec = c.PipelineSpec(
        blocks=[b for b in request.spec.blocks if b.id in keep],
        edges=[e for e in request.spec.edges if e.source_block_id in keep and e.target_block_id in keep],
    )
    for block in spec.blocks:
        if block.id == "out-0":
            block.export.formats[:] = [c.EXPORT_FORMAT_COG]
    out = pb.LaunchRunRequest()
    out.CopyFrom(request)
    out.spec.CopyFrom(spec)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watched:
    """Launch a run and follow it live, noting when each event arrives (and the endpoint's CPU time when the
    model step starts and ends)."""

    def __init__(self, orch: Orchestrator, request: pb.LaunchRunRequest, endpoint_pid: int = 0) -> None:
        self.endpoint_pid = endpoint_pid
        self.endpoint_cpu: dict[int, float] = {}
        self.run = orch.stub.LaunchRun(request)
        self.watch_from = time.time()
        self.events: list[tuple[c.RunEvent, float]] = []
        self.thread = threading.Thread(target=self._follow, args=(orch,))
        self.thread.start()

    def _follow(self, orch: Orchestrator) -> None:
        for event in orch.stub.WatchRun(pb.WatchRunRequest(run_id=self.run.id), timeout=1800):
            self.events.append((event, time.time()))
            if (
                self.endpoint_pid
                and event.block_id == "water"
                and event.type in (c.RUN_EVENT_TYPE_STEP_STARTED, c.RUN_EVENT_TYPE_STEP_SUCCEEDED)
            ):
                self.endpoint_cpu[event.type] = cpu_seconds(self.endpoint_pid)

    def endpoint_step_cpu(self) -> float:
        return self.endpoint_cpu[c.RUN_EVENT_TYPE_STEP_SUCCEEDED] - self.endpoint_cpu[c.RUN_EVENT_TYPE_STEP_STARTED]

    def worker_step_cpu(self) -> float:
        for event, _ in self.events:
            found = re.search(r"([0-9.]+)s CPU in this worker", event.message)
            if event.block_id == "water" and found:
                return float(found.group(1))
        raise SystemExit("the model step did not report its CPU time")

    def finish(self) -> list[tuple[c.RunEvent, float]]:
        self.thread.join()
        last = self.events[-1][0]
        if last.type != c.RUN_EVENT_TYPE_RUN_SUCCEEDED:
            raise SystemExit(f"run {self.run.id} ended {c.RunEventType.Name(last.type)}: {last.message}")
        return self.events

    def latencies_ms(self) -> list[float]:
        return [
            (received - e.time.ToNanoseconds() / 1e9) * 1000
            for e, received in self.events
            if e.time.ToNanoseconds() / 1e9 >= self.watch_from
        ]

    def step_seconds(self, block_id: str) -> float:
        times = {
            c.RunEventType.Name(e.type): e.time.ToNanoseconds() / 1e9
            for e, _ in self.events
            if e.block_id == block_id and e.type in (c.RUN_EVENT_TYPE_STEP_STARTED, c.RUN_EVENT_TYPE_STEP_SUCCEEDED)
        }
        return times["RUN_EVENT_TYPE_STEP_SUCCEEDED"] - times["RUN_EVENT_TYPE_STEP_STARTED"]


def tight_loop(
    scene_path: Path, endpoint: str, endpoint_pid: int = 0, concurrency: int = CONCURRENCY
) -> tuple[float, int, float]:
    """(tiles/s, tiles, client + endpoint CPU seconds per tile) of a client sending every tile of the scene
    (in memory, normalised) in batches of BATCH, CONCURRENCY in flight."""
    scene = blocks.inspect_scene(str(scene_path), BANDS, ["green", "nir"])
    grid = blocks.TileGrid.for_scene(scene.width, scene.height, TILE, 0)
    normalizer = blocks.Normalizer.build("reflectance", ["green", "nir"], {})
    with blocks.TileReader(scene, grid, ["green", "nir"], normalizer) as reader:
        batches = [reader.read(list(range(i, min(i + BATCH, grid.count)))) for i in range(0, grid.count, BATCH)]
    with InferenceClient([endpoint], "ndwi-water", output_name="water_probability") as client:
        client.describe()
        client.infer(batches[0])  # warm the channel
        start, cpu_start = time.perf_counter(), time.process_time()
        endpoint_start = cpu_seconds(endpoint_pid) if endpoint_pid else 0.0
        for _ in client.run(enumerate(batches), concurrency):
            pass
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        endpoint_cpu = cpu_seconds(endpoint_pid) - endpoint_start if endpoint_pid else 0.0
    print(
        f"    loop ({concurrency} in flight): {grid.count / elapsed:.0f} tiles/s; client "
        f"{cpu / grid.count * 1000:.2f} ms CPU/tile, endpoint {endpoint_cpu / grid.count * 1000:.2f} ms CPU/tile",
        flush=True,
    )
    return grid.count / elapsed, grid.count, (cpu + endpoint_cpu) / grid.count


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=2048)
    parser.add_argument("--large", type=int, default=8192)
    parser.add_argument("--throughput", type=int, default=8192)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    print(f"work dir {work}", flush=True)
    scenes = {}
    for size in sorted({args.small, args.large, args.throughput}):
        started = time.monotonic()
        scenes[size] = write_scene(work / f"scene-{size}.tif", size, rows_per_write=256)
        print(
            f"scene {size}x{size}x4 uint16 written in {time.monotonic() - started:.1f}s "
            f"({scenes[size].stat().st_size / 2**20:.0f} MiB)",
            flush=True,
        )

    endpoint = ModelEndpoint(NDWI_DIR, work).start()
    env = orchestrator_env(
        work / "home",
        CONSTELLATION_ORCHESTRATOR_BATCH_SIZE=str(BATCH),
        CONSTELLATION_ORCHESTRATOR_MAX_CONCURRENCY=str(CONCURRENCY),
    )
    orch = Orchestrator(env)
    latencies: list[float] = []
    try:
        # 1. Throughput, alternating the loop and the pipeline.
        # The machine is shared: each pipeline run sits between two loop runs, and each round's ratio uses
        # the mean of its two loops; the figure is the median round.
        loop_rates, step_rates, ratios, cpu_ratios, sequential_rates = [], [], [], [], []
        pid = endpoint.process.pid
        before, tiles, before_cpu = tight_loop(scenes[args.throughput], endpoint.address, pid)
        for i in range(args.rounds):
            request = raster_only(
                water_request(
                    f"file://{scenes[args.throughput]}",
                    endpoint.address,
                    [f"file://{work}/out-t{i}"],
                    overlap_px=0,
                    batch_size=BATCH,
                    max_concurrency=CONCURRENCY,
                )
            )
            watched = Watched(orch, request, pid)
            watched.finish()
            latencies += watched.latencies_ms()
            step = tiles / watched.step_seconds("water")
            step_cpu = (watched.worker_step_cpu() + watched.endpoint_step_cpu()) / tiles
            print(
                f"    pipeline: worker {watched.worker_step_cpu() / tiles * 1000:.2f} ms CPU/tile, endpoint "
                f"{watched.endpoint_step_cpu() / tiles * 1000:.2f} ms CPU/tile",
                flush=True,
            )
            after, _, after_cpu = tight_loop(scenes[args.throughput], endpoint.address, pid)
            loop, loop_cpu = (before + after) / 2, (before_cpu + after_cpu) / 2
            loop_rates.append(loop)
            step_rates.append(step)
            ratios.append(step / loop)
            cpu_ratios.append(loop_cpu / step_cpu)
            print(
                f"round {i + 1}: tight loop {before:.0f} / {after:.0f} tiles/s, pipeline model step {step:.0f} tiles/s "
                f"({tiles} tiles) = {step / loop:.1%}; CPU per tile (client + endpoint) loop {loop_cpu * 1000:.2f} ms, "
                f"pipeline {step_cpu * 1000:.2f} ms = {loop_cpu / step_cpu:.1%}",
                flush=True,
            )
            sequential_rates.append(tight_loop(scenes[args.throughput], endpoint.address, pid, concurrency=1)[0])
            before, before_cpu = after, after_cpu

        # 3. Memory, one worker process per scene size (full pipeline).
        rss_kib = {}
        for size in (args.small, args.large):
            started = time.monotonic()
            request = water_request(
                f"file://{scenes[size]}",
                endpoint.address,
                [f"file://{work}/out-{size}"],
                overlap_px=16,
                batch_size=BATCH,
                max_concurrency=CONCURRENCY,
            )
            watched = Watched(orch, request)
            watched.finish()
            latencies += watched.latencies_ms()
            instance = orch.server.runs.instance
            deadline = time.monotonic() + 30
            while MAX_RSS_TAG not in (instance.get_run_by_id(dagster_run_id(watched.run.id)).tags):
                assert time.monotonic() < deadline, "the launcher did not record the worker's peak memory"
                time.sleep(0.1)
            rss_kib[size] = int(instance.get_run_by_id(dagster_run_id(watched.run.id)).tags[MAX_RSS_TAG])
            steps = ", ".join(
                f"{b} {watched.step_seconds(b):.1f}s"
                for b in ("scene", "tiles", "water", "mosaic", "polygons", "out-0")
            )
            print(
                f"{size}x{size}: run {time.monotonic() - started:.1f}s ({steps}); worker peak RSS "
                f"{rss_kib[size] / 1024:.0f} MiB",
                flush=True,
            )
    finally:
        orch.stop()
        endpoint.stop()
        shutil.rmtree(work, ignore_errors=True)  # scenes and every run's outputs: GBs

    loop, step, share = statistics.median(loop_rates), statistics.median(step_rates), statistics.median(ratios)
    ratio = rss_kib[args.large] / rss_kib[args.small]
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    print()
    print(
        f"inference throughput: pipeline model step {step:.0f} tiles/s vs tight loop {loop:.0f} tiles/s "
        f"(medians); median round ratio {share:.1%} (target >= 85%)"
    )
    print(
        "  CPU-bound equivalent (loop CPU per tile / pipeline CPU per tile, client + endpoint): median "
        f"{statistics.median(cpu_ratios):.1%}"
    )
    sequential = statistics.median(sequential_rates)
    print(
        f"  against a sequential tight loop (one request at a time): {sequential:.0f} tiles/s, pipeline = "
        f"{step / sequential:.1%}"
    )
    print(
        f"event latency (Dagster write -> WatchRun client), {len(latencies)} events: p50 {p50:.0f} ms, p95 "
        f"{p95:.0f} ms, max {max(latencies):.0f} ms (target p95 <= 250 ms)"
    )
    print(
        f"peak worker memory: {args.small}^2 {rss_kib[args.small] / 1024:.0f} MiB, {args.large}^2 "
        f"{rss_kib[args.large] / 1024:.0f} MiB = {ratio:.2f}x (target <= 1.5x)"
    )
    ok = share >= 0.85 and p95 <= 250 and ratio <= 1.5
    print("all targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("CONSTELLATION_LOG_LEVEL", "WARNING")
    sys.exit(main())
