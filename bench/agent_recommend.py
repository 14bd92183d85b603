"""Offline Recommend latency over large catalogs, and the offline planner's accuracy.

    .venv/bin/python bench/agent_recommend.py [--requests 200]

The ranking runs on an in-memory snapshot of synthetic catalogs (1,000 and
10,000 entries, 80% datasets / 20% models): parse the prompt, BM25 over the
catalog text, score and sort. That is the agent's work per request once its
catalog snapshot (cached for a few seconds) is in memory; reading the catalog
from core is a separate cost, printed as the snapshot build time. Also prints
top-1 accuracy on tests/data/agent_prompts.yaml against tests/data/agent_catalog.yaml.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

from agent_svc.catalog import DatasetEntry, ModelEntry, Snapshot  # noqa: E402
from agent_svc.planning import Index, recommend  # noqa: E402
from agent_svc.prompt import PLACES, parse  # noqa: E402

PROMPTS = [
    "map surface water in the Olinda scene",
    "detect ships in the port of Rotterdam with Sentinel-1",
    "classify land cover around Lisbon at 10 m resolution or better",
    "burn scar mapping with Landsat 8 in California",
    "estimate vegetation greenness in the Amazon, latency under 5 ms",
]
SENSORS = ["sentinel-2", "sentinel-1", "landsat-7", "landsat-8", "landsat-9", "modis", "planetscope"]
BANDS = {"sentinel-1": ["vv", "vh"], "modis": ["red", "nir"], "planetscope": ["blue", "green", "red", "nir"]}
OPTICAL = ["blue", "green", "red", "nir", "swir1", "swir2"]
TOPICS = ["water", "flood", "forest", "urban", "ships", "burn", "crops", "coast", "snow", "desert"]
TASKS = ["segmentation", "classification", "detection", "regression"]


def synthetic(entries: int, seed: int = 1) -> Snapshot:
    rng = random.Random(seed)
    places = list(PLACES.items())
    datasets = []
    for i in range(int(entries * 0.8)):
        sensor = rng.choice(SENSORS)
        place, box = rng.choice(places)
        topics = rng.sample(TOPICS, 2)
        datasets.append(DatasetEntry(
            f"ds_{i:06d}", f"{sensor}-{place.replace(' ', '-')}-{i}", f"{sensor} scene over {place} showing {' and '.join(topics)}",
            sensor, tuple(BANDS.get(sensor, OPTICAL)), rng.choice([3, 10, 30, 250]), box, tuple(topics)))
    models = []
    for i in range(entries - len(datasets)):
        task, topic = rng.choice(TASKS), rng.choice(TOPICS)
        bands = tuple(rng.sample(OPTICAL, 2)) if topic != "ships" else ("vv", "vh")
        models.append(ModelEntry(f"mdl_{i:06d}", f"{topic}-{task}-{i}", "1.0.0", task, f"{task} of {topic}", bands, 256,
                                 {"accuracy": round(rng.uniform(0.6, 0.95), 2), "latency_ms": rng.choice([0.5, 2, 10, 50])}, (topic,)))
    return Snapshot(tuple(datasets), tuple(models))


def timings(snapshot: Snapshot, requests: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    index = Index(snapshot)
    build = time.perf_counter() - start
    samples = []
    for i in range(requests):
        prompt = PROMPTS[i % len(PROMPTS)]
        start = time.perf_counter()
        recommend(parse(prompt), index)
        samples.append(time.perf_counter() - start)
    return build, samples


def accuracy() -> str:
    from agent_svc.catalog import DatasetEntry as D, ModelEntry as M

    catalog = yaml.safe_load((ROOT / "tests" / "data" / "agent_catalog.yaml").read_text())
    snapshot = Snapshot(
        tuple(D(d["name"], d["name"], d["description"], d["sensor"], tuple(d["bands"]), d["resolution_m"], tuple(d["bbox"]), tuple(d["tags"])) for d in catalog["datasets"]),
        tuple(M(m["name"], m["name"], "1.0.0", m["task"], m["description"], tuple(m["bands"]), m["tile_size_px"], m["metrics"], tuple(m["tags"])) for m in catalog["models"]),
    )
    index = Index(snapshot)
    cases = yaml.safe_load((ROOT / "tests" / "data" / "agent_prompts.yaml").read_text())
    possible = [c for c in cases if c.get("satisfied", True)]
    hits_d = hits_m = impossible = 0
    for case in cases:
        answer = recommend(parse(case["prompt"]), index)
        if case.get("satisfied") is False:
            impossible += not answer.satisfied
        else:
            hits_d += answer.datasets[0].entry.id == case["dataset"]
            hits_m += answer.models[0].entry.id == case["model"]
    n = len(possible)
    return f"top-1 dataset {hits_d}/{n} ({hits_d / n:.0%}), top-1 model {hits_m}/{n} ({hits_m / n:.0%}), impossible recognised {impossible}/{len(cases) - n}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    results = {}
    for size in (1_000, 10_000):
        build, samples = timings(synthetic(size), args.requests)
        ordered = sorted(samples)
        results[size] = statistics.median(ordered)
        print(f"{size:>6} entries: Recommend p50 {results[size] * 1000:6.2f} ms, p95 {ordered[int(len(ordered) * 0.95)] * 1000:6.2f} ms; index build {build * 1000:.0f} ms")
    verdict = "ok" if results[1_000] <= 0.050 else "MISSES TARGET"
    print(f"p50 at 1,000 entries {results[1_000] * 1000:.2f} ms (target <= 50 ms) [{verdict}]; 10x the catalog costs {results[10_000] / results[1_000]:.1f}x")
    print(f"offline planner on the labelled set: {accuracy()} (target >= 90%)")


if __name__ == "__main__":
    main()
