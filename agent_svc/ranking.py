"""Ranking catalog entries against an intent, with the reasons each fits or falls short.

Scores are tiered so that order and score agree: an entry with k unmet hard
constraints scores in [0.5, 1] * 0.5**k, placed within its tier by how well
its text matches the prompt (BM25) and by soft preferences (suggested task,
radar when the prompt mentions clouds, models trained on the dataset's
sensor). A plan needs a dataset and a model that fit together (the dataset
has every band the model reads), so the best compatible pair is chosen
jointly and listed first; `satisfied` is true only when that pair meets every
hard constraint.

The index (`RankIndex`) is built once per catalog snapshot and holds the
catalog as numpy arrays, so checking 10,000 entries is a handful of vector
operations; reasons are written only for the entries returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from agent_svc import prompt as prompt_mod
from agent_svc import text
from agent_svc.domain import (
    Candidate,
    Catalog,
    Dataset,
    Intent,
    Model,
    Recommendation,
    least_cloud,
    scenes_in_range,
)
from agent_svc.embeddings import Embedder
from pipeline.bands import canonical, match_bands, servable

# Model card metric names read as latency (ms per tile) and as quality in [0, 1], in order of preference.
LATENCY_METRICS = ("latency_ms", "p50_latency_ms", "latency_ms_per_tile", "median_latency_ms")
QUALITY_METRICS = (
    "accuracy",
    "heldout_accuracy",
    "overall_accuracy",
    "iou",
    "heldout_iou",
    "miou",
    "f1",
    "dice",
    "map",
    "r2",
)
PAIR_CANDIDATES = 10
SAR_BANDS = prompt_mod.SAR_BANDS


def latency_of(model: Model) -> tuple[str, float] | None:
    metrics = dict(model.metrics)
    return next(((k, metrics[k]) for k in LATENCY_METRICS if k in metrics), None)


def quality_of(model: Model) -> tuple[str, float] | None:
    metrics = dict(model.metrics)
    found = next(((k, metrics[k]) for k in QUALITY_METRICS if k in metrics), None)
    if found is None:  # any other figure whose name says what it is
        found = next(((k, v) for k, v in metrics.items() if any(q in k for q in ("accuracy", "iou", "f1"))), None)
    return found


def dataset_document(d: Dataset) -> list[str]:
    return text.terms(" ".join([d.name.replace("-", " "), d.description, " ".join(d.tags), d.sensor]))


def model_document(m: Model) -> list[str]:
    return text.terms(" ".join([m.name.replace("-", " "), m.description, m.data_used, " ".join(m.tags), m.task]))


def _is_sar(bands: tuple[str, ...], sensor: str = "") -> bool:
    return bool(bands) and all(b in SAR_BANDS for b in bands) or sensor in prompt_mod.SAR_SENSORS


class RankIndex:
    """The catalog as arrays and text indexes, built once per snapshot."""

    def __init__(self, catalog: Catalog, embedder: Embedder | None = None) -> None:
        self.catalog = catalog
        self.embedder = embedder
        ds, ms = catalog.datasets, catalog.models
        # Bands by canonical name (pipeline.bands); a dataset's bits also hold what its near equivalents serve.
        band_names = sorted({b for d in ds for b in servable(d.bands)} | {canonical(b) for m in ms for b in m.bands})
        self.band_bit = {b: 1 << i for i, b in enumerate(band_names)}
        if len(band_names) > 62:  # bands beyond 62 names share no bit: compatibility then falls back to sets
            self.band_bit = {b: (1 << i) if i < 62 else 0 for i, b in enumerate(band_names)}

        self.d_docs = [dataset_document(d) for d in ds]
        self.d_text = text.TextIndex(self.d_docs)
        self.d_sensor = np.array([d.sensor.lower() for d in ds], dtype=object)
        self.d_bits = np.array([self.bits(servable(d.bands)) for d in ds], dtype=np.int64)
        self.d_res = np.array([d.resolution_m or np.nan for d in ds], dtype=np.float64)
        self.d_bbox = np.array([d.bbox if d.bbox else (np.nan,) * 4 for d in ds], dtype=np.float64).reshape(len(ds), 4)
        self.d_sar = np.array([_is_sar(d.bands, d.sensor) for d in ds], dtype=bool)

        self.m_docs = [model_document(m) for m in ms]
        self.m_text = text.TextIndex(self.m_docs)
        self.m_task = np.array([m.task for m in ms], dtype=object)
        self.m_bits = np.array([self.bits(m.bands) for m in ms], dtype=np.int64)
        self.m_latency = np.array([(latency_of(m) or ("", np.nan))[1] for m in ms], dtype=np.float64)
        self.m_quality = np.array([(quality_of(m) or ("", np.nan))[1] for m in ms], dtype=np.float64)
        self.m_sar = np.array([_is_sar(m.bands) for m in ms], dtype=bool)
        self.m_trained_on = [prompt_mod.sensors_in(f"{m.data_used} {m.description}") for m in ms]
        sensors = sorted(set(self.d_sensor.tolist()))
        code = {name: i if i < 63 else 63 for i, name in enumerate(sensors)}  # code 63 never matches
        self.d_sensor_code = np.array([code[s] for s in self.d_sensor.tolist()], dtype=np.int64)
        self.m_sensor_mask = np.array(
            [
                sum(
                    1 << code[s]
                    for s in sensors
                    if code[s] < 63 and any(prompt_mod.sensor_matches(s, t) for t in trained)
                )
                for trained in self.m_trained_on
            ],
            dtype=np.int64,
        )
        if embedder is not None:
            self.d_vectors = embedder.encode([" ".join([d.name, d.description, d.sensor, *d.tags]) for d in ds])
            self.m_vectors = embedder.encode(
                [" ".join([m.name, m.task, m.description, m.data_used, *m.tags]) for m in ms]
            )
        self.d_by_id = {d.id: i for i, d in enumerate(ds)}
        self.m_by_id = {m.id: i for i, m in enumerate(ms)}

    def bits(self, bands: Iterable[str]) -> int:
        value = 0
        for b in bands:
            value |= self.band_bit.get(canonical(b), 0)
        return value

    def family_bits(self, wanted: str) -> int:
        return self.bits(prompt_mod.BAND_FAMILIES.get(wanted, (wanted,)))


@dataclass
class Scored:
    shortfalls: np.ndarray  # hard constraints missed, per entry
    score: np.ndarray
    relevance: np.ndarray
    quality: np.ndarray  # relevance and soft preferences together, in [0, 1]
    order: np.ndarray  # entry indices, best first


def _tiered(shortfalls: np.ndarray, quality: np.ndarray) -> np.ndarray:
    return np.ldexp(0.5 + 0.5 * np.clip(quality, 0.0, 1.0), -np.asarray(shortfalls, dtype=np.int32))


def _order(shortfalls: np.ndarray, score: np.ndarray) -> np.ndarray:
    return np.lexsort((-score, shortfalls))


def score_datasets(index: RankIndex, intent: Intent) -> Scored:
    c = intent.constraints
    n = len(index.catalog.datasets)
    misses = np.zeros(n, dtype=np.int64)
    if c.sensors:
        ok = np.zeros(n, dtype=bool)
        for sensor in set(index.d_sensor.tolist()):
            if any(prompt_mod.sensor_matches(sensor, w) for w in c.sensors):
                ok |= index.d_sensor == sensor
        misses += ~ok
    for band in c.bands:
        misses += (index.d_bits & index.family_bits(band)) == 0
    coverage = np.zeros(n)
    if c.region is not None:
        coverage = _coverage(index.d_bbox, c.region)
        misses += coverage <= 0
    if c.max_resolution_m:
        misses += ~(index.d_res <= c.max_resolution_m)  # NaN (unknown) counts as a miss
    if c.modality:
        misses += index.d_sar != (c.modality == "sar")
    datasets = index.catalog.datasets
    dated = c.date_range is not None or c.month
    in_range = [scenes_in_range(d, c) for d in datasets]
    if dated:  # a dataset without a scene in the dates (or without dates at all) misses
        misses += np.array([not scenes for scenes in in_range], dtype=np.int64)
    relevance = _relevance(index, index.d_text.relevance(intent.terms), "d_vectors", intent)
    soft = np.zeros(n)
    if c.region is not None:
        soft += 0.5 * coverage
    if intent.preferred_modality:
        soft += 0.5 * (index.d_sar == (intent.preferred_modality == "sar"))
    quality = np.clip(0.8 * relevance + 0.2 * soft, 0.0, 1.0)
    if intent.least_cloudy:  # clear skies weigh as much as the words: "the least cloudy scene" is the point
        covers = [least_cloud(scenes) for scenes in in_range]
        clear = np.array([1.0 - cover / 100.0 if cover is not None else 0.0 for cover in covers])
        quality = np.clip(0.5 * quality + 0.5 * clear, 0.0, 1.0)
    score = _tiered(misses, quality)
    return Scored(misses, score, relevance, quality, _order(misses, score))


def score_models(index: RankIndex, intent: Intent) -> Scored:
    c = intent.constraints
    n = len(index.catalog.models)
    misses = np.zeros(n, dtype=np.int64)
    if c.task:
        misses += index.m_task != c.task
    if c.max_latency_ms:
        misses += ~(index.m_latency <= c.max_latency_ms)
    if c.min_accuracy:
        misses += ~(index.m_quality >= c.min_accuracy)
    if c.modality:
        misses += index.m_sar != (c.modality == "sar")
    relevance = _relevance(index, index.m_text.relevance(intent.model_terms), "m_vectors", intent)
    soft = np.zeros(n)
    if intent.preferred_task and not c.task:
        soft += 0.6 * (index.m_task == intent.preferred_task)
    if intent.preferred_modality:
        soft += 0.2 * (index.m_sar == (intent.preferred_modality == "sar"))
    if c.bands:
        wanted = 0
        for band in c.bands:
            wanted |= index.family_bits(band)
        soft += 0.2 * ((index.m_bits & wanted) != 0)
    quality = np.clip(0.75 * relevance + 0.25 * soft, 0.0, 1.0)
    score = _tiered(misses, quality)
    return Scored(misses, score, relevance, quality, _order(misses, score))


def _relevance(index: RankIndex, bm25: np.ndarray, vectors: str, intent: Intent) -> np.ndarray:
    """BM25 alone, or blended half and half with embedding similarity (scaled so the best scores 1)."""
    if index.embedder is None or not len(bm25):
        return bm25
    similarity = np.clip(getattr(index, vectors) @ index.embedder.encode([intent.prompt])[0], 0.0, None)
    best = float(similarity.max())
    return 0.5 * bm25 + 0.5 * (similarity / best if best > 0 else similarity)


def _coverage(boxes: np.ndarray, region: tuple[float, float, float, float]) -> np.ndarray:
    """Share of `region` each box covers; 0 for no overlap or an unknown footprint."""
    width = np.minimum(boxes[:, 2], region[2]) - np.maximum(boxes[:, 0], region[0])
    height = np.minimum(boxes[:, 3], region[3]) - np.maximum(boxes[:, 1], region[1])
    area = max((region[2] - region[0]) * (region[3] - region[1]), 1e-12)
    covered = np.where((width > 0) & (height > 0), width * height / area, 0.0)
    return np.nan_to_num(covered, nan=0.0)


@dataclass
class Joint:
    """Each entry's best compatible partner and the pair's score; -1 / NaN-free zeros when it has none."""

    d_partner: np.ndarray
    d_score: np.ndarray
    d_misses: np.ndarray
    m_partner: np.ndarray
    m_score: np.ndarray
    m_misses: np.ndarray
    best: tuple[int, int] | None


NO_PARTNER = 1 << 30


def _pair_matrix(
    index: RankIndex, ds: Scored, ms: Scored, d_idx: np.ndarray, m_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Misses and scores of every (d_idx[i], m_idx[j]) pair; incompatible pairs get NO_PARTNER misses and score -1."""
    d_bits = index.d_bits[d_idx][:, None]
    m_bits = index.m_bits[m_idx][None, :]
    compatible = (d_bits & m_bits) == m_bits
    misses = ds.shortfalls[d_idx][:, None] + ms.shortfalls[m_idx][None, :]
    affinity = ((index.m_sensor_mask[m_idx][None, :] >> index.d_sensor_code[d_idx][:, None]) & 1).astype(np.float64)
    quality = np.clip((ds.quality[d_idx][:, None] + ms.quality[m_idx][None, :]) / 2 + 0.05 * affinity, 0.0, 1.0)
    score = _tiered(misses, quality)
    return np.where(compatible, misses, NO_PARTNER), np.where(compatible, score, -1.0)


def _better(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> np.ndarray:
    return (m1 < m2) | ((m1 == m2) & (s1 > s2))


def joint(
    index: RankIndex, ds: Scored, ms: Scored, dataset_only: int | None = None, model_only: int | None = None
) -> Joint:
    """Pairs searched: every dataset with the leading models, and the leading datasets with every model.

    An entry's score is that of the best pair it is in, so both lists are
    ordered by the same pair scores and the best pair leads both. Pins limit
    the search to the pinned entry.
    """
    n_d, n_m = len(ds.order), len(ms.order)
    all_d = np.array([dataset_only]) if dataset_only is not None else np.arange(n_d)
    all_m = np.array([model_only]) if model_only is not None else np.arange(n_m)
    top_d = all_d if dataset_only is not None else ds.order[:PAIR_CANDIDATES]
    top_m = all_m if model_only is not None else ms.order[:PAIR_CANDIDATES]

    d_partner = np.full(n_d, -1)
    d_misses = np.full(n_d, NO_PARTNER)
    d_score = np.full(n_d, -1.0)
    m_partner = np.full(n_m, -1)
    m_misses = np.full(n_m, NO_PARTNER)
    m_score = np.full(n_m, -1.0)
    if not n_d or not n_m:
        return Joint(d_partner, d_score, d_misses, m_partner, m_score, m_misses, None)

    for rows, cols in ((all_d, top_m), (top_d, all_m)):
        if not len(rows) or not len(cols):
            continue
        misses, score = _pair_matrix(index, ds, ms, rows, cols)
        # One sortable key per pair: fewer misses first, then the higher score (score is in (0, 1]).
        key = misses * 2.0 - score
        best_col = key.argmin(axis=1)
        r = np.arange(len(rows))
        rm, rs = misses[r, best_col], score[r, best_col]
        take = _better(rm, rs, d_misses[rows], d_score[rows])
        d_misses[rows[take]], d_score[rows[take]], d_partner[rows[take]] = rm[take], rs[take], cols[best_col[take]]
        best_row = key.argmin(axis=0)
        c = np.arange(len(cols))
        cm, cs = misses[best_row, c], score[best_row, c]
        take = _better(cm, cs, m_misses[cols], m_score[cols])
        m_misses[cols[take]], m_score[cols[take]], m_partner[cols[take]] = cm[take], cs[take], rows[best_row[take]]

    best = None
    if (d_partner >= 0).any():
        d = int((d_misses * 2.0 - d_score).argmin())
        best = (d, int(d_partner[d]))
    return Joint(d_partner, d_score, d_misses, m_partner, m_score, m_misses, best)


def explain_dataset(index: RankIndex, i: int, intent: Intent, ds: Scored) -> Candidate:
    d = index.catalog.datasets[i]
    c = intent.constraints
    reasons: list[str] = []
    shortfalls: list[str] = []
    if c.sensors:
        if any(prompt_mod.sensor_matches(d.sensor, w) for w in c.sensors):
            reasons.append(f"sensor {d.sensor}, as asked")
        else:
            shortfalls.append(f"sensor {d.sensor or 'unknown'}, not {' or '.join(c.sensors)}")
    if c.bands:
        have = [b for b in c.bands if prompt_mod.has_band(d.bands, b)]
        lack = [b for b in c.bands if b not in have]
        if have:
            reasons.append(f"has bands {', '.join(have)}")
        if lack:
            shortfalls.append(f"lacks band{'s' if len(lack) > 1 else ''} {', '.join(lack)}")
    if c.region is not None:
        coverage = float(_coverage(index.d_bbox[i : i + 1], c.region)[0])
        if coverage > 0:
            reasons.append(f"covers {min(coverage, 1.0):.0%} of {c.region_name or 'the region'}")
        elif d.bbox is None:
            shortfalls.append(f"footprint unknown, so it may not cover {c.region_name or 'the region'}")
        else:
            shortfalls.append(f"does not cover {c.region_name or 'the region'}")
    if c.max_resolution_m:
        if not d.resolution_m:
            shortfalls.append("resolution unknown")
        elif d.resolution_m <= c.max_resolution_m:
            reasons.append(f"resolution {d.resolution_m:g} m meets {c.max_resolution_m:g} m")
        else:
            shortfalls.append(f"resolution {d.resolution_m:g} m is coarser than {c.max_resolution_m:g} m")
    sar = bool(index.d_sar[i])
    if c.modality:
        if sar == (c.modality == "sar"):
            reasons.append("radar (SAR), as asked" if sar else "optical, as asked")
        else:
            shortfalls.append("radar (SAR), not optical" if sar else "optical, not radar (SAR)")
    elif intent.preferred_modality == "sar" and sar:
        reasons.append("radar sees through clouds")
    scenes = scenes_in_range(d, c)
    if c.date_range is not None or c.month:
        when = prompt_mod.describe_dates(c)
        if scenes:
            reasons.append(f"{len(scenes)} of its {len(d.scenes)} scene(s) are {when}")
        else:
            shortfalls.append(f"no scene {when}")
    if scenes and intent.least_cloudy:
        best = min(scenes, key=lambda s: (s.cloud_cover is None, s.cloud_cover or 0.0))
        cover = "unknown" if best.cloud_cover is None else f"{best.cloud_cover:g}%"
        reasons.append(f"clearest scene {best.id} of {best.acquired:%Y-%m-%d}: {cover} cloud")
    matched = _matched_terms(intent.terms, index.d_docs[i], intent.shown)
    if matched:
        reasons.append("matches " + ", ".join(f"'{t}'" for t in matched))
    reasons.append(f"{d.sensor or 'unknown sensor'}, {d.resolution_m:g} m, bands {', '.join(d.bands)}")
    if d.scenes:
        first, last = min(s.acquired for s in d.scenes), max(s.acquired for s in d.scenes)
        reasons.append(f"{len(d.scenes)} STAC scene(s), {first:%Y-%m-%d} to {last:%Y-%m-%d}")
    return Candidate(d.id, d.name, round(float(ds.score[i]), 4), reasons, shortfalls)


def explain_model(index: RankIndex, i: int, intent: Intent, ms: Scored, dataset: Dataset | None) -> Candidate:
    m = index.catalog.models[i]
    c = intent.constraints
    reasons: list[str] = []
    shortfalls: list[str] = []
    if c.task:
        if m.task == c.task:
            reasons.append(f"task {m.task}, as asked")
        else:
            shortfalls.append(f"task {m.task or 'unknown'}, not {c.task}")
    elif intent.preferred_task:
        if m.task == intent.preferred_task:
            reasons.append(f"task {m.task}, which the wording suggests")
        else:
            shortfalls.append(f"task {m.task or 'unknown'}; the wording suggests {intent.preferred_task}")
    latency = latency_of(m)
    if c.max_latency_ms:
        if latency is None:
            shortfalls.append("its card gives no latency")
        elif latency[1] <= c.max_latency_ms:
            reasons.append(f"latency {latency[1]:g} ms per tile is within {c.max_latency_ms:g} ms")
        else:
            shortfalls.append(f"latency {latency[1]:g} ms per tile is over {c.max_latency_ms:g} ms")
    quality = quality_of(m)
    if c.min_accuracy:
        if quality is None:
            shortfalls.append("its card gives no accuracy figure")
        elif quality[1] >= c.min_accuracy:
            reasons.append(f"{quality[0]} {quality[1]:g} meets {c.min_accuracy:g}")
        else:
            shortfalls.append(f"{quality[0]} {quality[1]:g} is below {c.min_accuracy:g}")
    sar = bool(index.m_sar[i])
    if c.modality:
        if sar == (c.modality == "sar"):
            reasons.append("reads radar (SAR), as asked" if sar else "reads optical bands, as asked")
        else:
            shortfalls.append("reads radar (SAR), not optical" if sar else "reads optical bands, not radar (SAR)")
    if dataset is not None:
        match = match_bands(m.bands, dataset.bands)
        if match.missing:
            shortfalls.append(f"reads {', '.join(match.missing)}, which {dataset.name} lacks")
        else:
            reasons.append(f"reads {', '.join(m.bands)}, which {dataset.name} has")
            reasons += [f"{sub.describe()}: a near equivalent" for sub in match.substitutions]
    matched = _matched_terms(intent.model_terms, index.m_docs[i], intent.shown)
    if matched:
        reasons.append("matches " + ", ".join(f"'{t}'" for t in matched))
    figures = [f"{m.task or 'unknown task'}"]
    if quality:
        figures.append(f"{quality[0]} {quality[1]:g}")
    if latency:
        figures.append(f"{latency[1]:g} ms per tile")
    reasons.append(", ".join(figures))
    return Candidate(m.id, f"{m.name}", round(float(ms.score[i]), 4), reasons, shortfalls)


def _matched_terms(query: dict[str, float], document: list[str], shown: dict[str, str], limit: int = 4) -> list[str]:
    present = set(document)
    found = sorted((t for t in query if t in present), key=lambda t: -query[t])
    return [shown.get(t, t) for t in found[:limit]]


def rank(
    index: RankIndex,
    intent: Intent,
    max_results: int,
    dataset_only: str = "",
    model_only: str = "",
    planner: str = "offline",
) -> Recommendation:
    """Ranked datasets and models for `intent`, each scored by the best compatible pair it is in."""
    ds = score_datasets(index, intent)
    ms = score_models(index, intent)
    pin_d = index.d_by_id.get(dataset_only) if dataset_only else None
    pin_m = index.m_by_id.get(model_only) if model_only else None
    pairs = joint(index, ds, ms)
    d_misses, d_score = _effective(pairs.d_partner, pairs.d_misses, pairs.d_score, ds)
    m_misses, m_score = _effective(pairs.m_partner, pairs.m_misses, pairs.m_score, ms)
    best_pair = pairs.best
    if pin_d is not None or pin_m is not None:
        # Pinned entries lead their lists whatever they score; the rest keep their places.
        pinned = joint(index, ds, ms, pin_d, pin_m)
        best_pair = pinned.best
        pin_d = best_pair[0] if best_pair else pin_d
        pin_m = best_pair[1] if best_pair else pin_m
    d_list = _head(d_misses, d_score, max_results, pin_d)
    m_list = _head(m_misses, m_score, max_results, pin_m)
    catalog = index.catalog
    lead = catalog.datasets[d_list[0]] if d_list else None
    datasets = []
    for i in d_list:
        candidate = explain_dataset(index, i, intent, ds)
        candidate.score = round(float(d_score[i]), 4)
        partner = int(pairs.d_partner[i])
        if partner >= 0:
            candidate.reasons.insert(0, f"pairs best with model {catalog.models[partner].name}")
        else:
            candidate.shortfalls.append("none of the leading models reads only bands it has")
        datasets.append(candidate)
    models = []
    for i in m_list:
        candidate = explain_model(index, i, intent, ms, lead)
        candidate.score = round(float(m_score[i]), 4)
        partner = int(pairs.m_partner[i])
        if partner < 0:
            candidate.shortfalls.append("none of the leading datasets has every band it reads")
        elif lead is None or catalog.datasets[partner].id != lead.id:
            candidate.reasons.insert(0, f"pairs best with dataset {catalog.datasets[partner].name}")
        models.append(candidate)
    if best_pair is not None and best_pair != pairs.best:
        satisfied = int(ds.shortfalls[best_pair[0]] + ms.shortfalls[best_pair[1]]) == 0
    else:
        satisfied = best_pair is not None and int(pairs.d_misses[best_pair[0]]) == 0
    for ranked, pin in ((datasets, dataset_only), (models, model_only)):
        if pin and ranked and ranked[0].id == pin:
            ranked[0].reasons.insert(0, "pinned by the request")
    best = (catalog.datasets[best_pair[0]].id, catalog.models[best_pair[1]].id) if best_pair else None
    summary = summarize(intent, datasets, models, satisfied, best_pair is not None, catalog)
    return Recommendation(datasets, models, satisfied, summary, planner, best)


def _effective(
    partner: np.ndarray, misses: np.ndarray, score: np.ndarray, own: Scored
) -> tuple[np.ndarray, np.ndarray]:
    """Pair misses and score; an entry with no compatible partner counts one more miss than its own."""
    alone = partner < 0
    misses = np.where(alone, own.shortfalls + 1, misses)
    score = np.where(alone, _tiered(own.shortfalls + 1, own.quality), score)
    return misses, score


def _head(misses: np.ndarray, score: np.ndarray, limit: int, pinned: int | None) -> list[int]:
    if pinned is not None:
        rest = [int(i) for i in _top(misses, score, limit + 1) if i != pinned]
        return [pinned, *rest][:limit]
    return [int(i) for i in _top(misses, score, limit)]


def _top(misses: np.ndarray, score: np.ndarray, limit: int) -> np.ndarray:
    """The `limit` best entries in order, without sorting the whole catalog."""
    key = misses * 2.0 - score  # score is in (0, 1], so fewer misses always wins
    if len(key) > limit:
        head = np.argpartition(key, limit)[:limit]
    else:
        head = np.arange(len(key))
    return head[np.lexsort((-score[head], misses[head]))]


def summarize(
    intent: Intent,
    datasets: list[Candidate],
    models: list[Candidate],
    satisfied: bool,
    compatible: bool,
    catalog: Catalog,
) -> str:
    understood = "; ".join(intent.notes) if intent.notes else "no explicit constraints"
    if not catalog.datasets or not catalog.models:
        missing = "datasets" if not catalog.datasets else "models"
        return f"Read the prompt as: {understood}. The catalog has no {missing} yet, so nothing can be recommended."
    if not compatible:
        return (
            f"Read the prompt as: {understood}. No model in the catalog reads bands that the leading datasets have, "
            "so no pipeline can be built from them; the nearest entries are listed with what they miss."
        )
    d, m = datasets[0], models[0]
    if satisfied:
        return (
            f"Read the prompt as: {understood}. Best fit: dataset {d.name} with model {m.name}; both meet "
            "every constraint."
        )
    misses = [f"{d.name}: {'; '.join(d.shortfalls)}" for d in datasets[:1] if d.shortfalls]
    misses += [f"{m.name}: {'; '.join(m.shortfalls)}" for m in models[:1] if m.shortfalls]
    return (
        f"Read the prompt as: {understood}. Nothing in the catalog meets every constraint. Nearest alternative: "
        f"dataset {d.name} with model {m.name}, which miss: {' | '.join(misses) or 'nothing hard, but see shortfalls'}."
    )
