"""Ranking catalog entries against an intent: hard constraints, then text relevance (BM25).

Every score comes with the reasons it matches and the shortfalls it has, so a
person can see why. A candidate with a shortfall in a hard constraint (task,
sensor, bands, region, resolution, latency, accuracy) never outranks one
without; when nothing meets them all, the nearest alternatives are returned
with what they miss.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

from agent_svc.catalog import DatasetEntry, ModelEntry, Snapshot
from agent_svc.prompt import TOPIC_WORDS, Intent

TOKEN = re.compile(r"[a-z0-9]+")
STOP = {
    "the", "a", "an", "in", "of", "for", "from", "with", "and", "or", "to", "on", "at", "by", "this", "that", "is", "are", "be",
    "after", "before", "during", "where", "what", "which", "show", "find", "around", "near", "into", "per", "each", "all",
    "scene", "image", "imagery", "using", "use", "me", "please", "over", "my", "our", "some", "any",
}


def tokens(text: str) -> list[str]:
    return [t for t in TOKEN.findall(text.lower()) if t not in STOP]


class BM25:
    def __init__(self, documents: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.docs = [Counter(tokens(d)) for d in documents]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = (sum(self.lengths) / len(self.docs)) if self.docs else 1.0
        frequency: Counter = Counter()
        for doc in self.docs:
            frequency.update(doc.keys())
        n = len(self.docs)
        self.idf = {term: math.log(1 + (n - f + 0.5) / (f + 0.5)) for term, f in frequency.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str) -> list[float]:
        terms = [t for t in set(tokens(query)) if t in self.idf]
        out = []
        for doc, length in zip(self.docs, self.lengths, strict=True):
            score = 0.0
            for term in terms:
                tf = doc.get(term, 0)
                if tf:
                    score += self.idf[term] * tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * length / self.avg))
            out.append(score)
        top = max(out, default=0.0)
        return [s / top if top else 0.0 for s in out]


@dataclass
class Ranked:
    entry: DatasetEntry | ModelEntry
    score: float
    reasons: list[str] = field(default_factory=list)
    shortfalls: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.shortfalls


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _topic_hits(intent: Intent, text: str) -> list[str]:
    words = set(tokens(text))
    return sorted(t for t in intent.topics if t in words or any(w in words for w in TOPIC_WORDS[t] if " " not in w))


def rank_datasets(intent: Intent, snapshot: Snapshot, relevance: list[float] | None = None) -> list[Ranked]:
    relevance = relevance if relevance is not None else BM25([d.text for d in snapshot.datasets]).scores(intent.text)
    ranked = []
    for dataset, text_score in zip(snapshot.datasets, relevance, strict=True):
        r = Ranked(dataset, 0.0)
        points = 0.35 * text_score
        if intent.sensors:
            if dataset.sensor in intent.sensors:
                r.reasons.append(f"sensor {dataset.sensor}")
                points += 0.2
            else:
                r.shortfalls.append(f"sensor is {dataset.sensor or 'unknown'}, not {' or '.join(sorted(intent.sensors))}")
        missing = sorted(intent.bands - set(dataset.bands))
        if intent.bands and not missing:
            r.reasons.append(f"has bands {', '.join(sorted(intent.bands))}")
            points += 0.1
        elif missing:
            r.shortfalls.append(f"lacks band(s) {', '.join(missing)}")
        if intent.region:
            if dataset.bbox and _overlaps(dataset.bbox, intent.region):
                r.reasons.append(f"covers {intent.place.title()}")
                points += 0.25
            elif intent.place and intent.place in dataset.text.lower():
                r.reasons.append(f"mentions {intent.place.title()}")
                points += 0.2
            else:
                r.shortfalls.append(f"does not cover {intent.place.title()}" if dataset.bbox else f"extent unknown; cannot confirm it covers {intent.place.title()}")
        if intent.max_resolution_m:
            if dataset.resolution_m and dataset.resolution_m <= intent.max_resolution_m:
                r.reasons.append(f"{dataset.resolution_m:g} m resolution")
                points += 0.1
            else:
                r.shortfalls.append(f"resolution {dataset.resolution_m:g} m is coarser than {intent.max_resolution_m:g} m" if dataset.resolution_m else "resolution unknown")
        hits = _topic_hits(intent, dataset.text)
        if hits:
            r.reasons.append(f"about {', '.join(hits)}")
            points += 0.1
        r.score = round(min(points, 1.0) * (1.0 if r.fits else 0.5), 4)
        ranked.append(r)
    return sorted(ranked, key=lambda r: (r.fits, r.score), reverse=True)


def rank_models(intent: Intent, snapshot: Snapshot, usable_bands: set[str] | None, relevance: list[float] | None = None) -> list[Ranked]:
    """`usable_bands`: bands of the datasets that fit; a model needing others cannot run on them."""
    relevance = relevance if relevance is not None else BM25([m.text for m in snapshot.models]).scores(intent.text)
    ranked = []
    for model, text_score in zip(snapshot.models, relevance, strict=True):
        r = Ranked(model, 0.0)
        points = 0.35 * text_score
        hits = _topic_hits(intent, model.text)
        if intent.task:
            if model.task == intent.task:
                r.reasons.append(f"does {model.task}")
                points += 0.25
            elif intent.task_required or (intent.topics and not hits):
                # A task read from wording gives way to a model on the right topic
                # ("classify crop types" -> a per-pixel crop-type model), not to any model.
                r.shortfalls.append(f"does {model.task}, not {intent.task}")
        if hits:
            r.reasons.append(f"about {', '.join(hits)}")
            points += 0.2
            if set(hits) & {t.lower() for t in model.tags}:
                points += 0.1  # curated tags say more than a mention in a description
        elif intent.topics:
            points -= 0.1
        if usable_bands is not None:
            missing = sorted(set(model.bands) - usable_bands)
            if missing:
                r.shortfalls.append(f"needs band(s) {', '.join(missing)} that no fitting dataset has")
            else:
                r.reasons.append(f"reads {', '.join(model.bands)}, which the data has")
                points += 0.1
        missing_requested = sorted(intent.bands - set(model.bands))
        if intent.bands and not missing_requested:
            points += 0.05
        latency = model.metric("latency_ms", "latency_ms_per_tile")
        if intent.max_latency_ms:
            if latency is not None and latency <= intent.max_latency_ms:
                r.reasons.append(f"{latency:g} ms per tile")
            else:
                r.shortfalls.append(f"latency {latency:g} ms exceeds {intent.max_latency_ms:g} ms" if latency is not None else "latency unknown")
        accuracy = model.metric("accuracy", "heldout_accuracy", "heldout_iou", "iou", "f1")
        if intent.min_accuracy:
            if accuracy is not None and accuracy >= intent.min_accuracy:
                r.reasons.append(f"accuracy {accuracy:.0%}")
                points += 0.05
            else:
                r.shortfalls.append(f"accuracy {accuracy:.0%} is below {intent.min_accuracy:.0%}" if accuracy is not None else "accuracy unknown")
        r.score = round(max(min(points, 1.0), 0.0) * (1.0 if r.fits else 0.5), 4)
        ranked.append(r)
    return sorted(ranked, key=lambda r: (r.fits, r.score), reverse=True)


def best_pair(datasets: list[Ranked], models: list[Ranked], shortlist: int = 40) -> tuple[Ranked, Ranked] | None:
    """The highest-scoring dataset and model that can run together (the model's bands are in the dataset).

    Both lists come sorted best first, so the search looks at the top
    `shortlist` of each, and scans everything only when no pair there fits.
    """
    def search(ds: list[Ranked], ms: list[Ranked]) -> tuple[Ranked, Ranked] | None:
        best, best_score = None, -1.0
        for d in ds:
            bands = set(d.entry.bands)  # type: ignore[union-attr]
            for m in ms:
                if not set(m.entry.bands) <= bands:  # type: ignore[union-attr]
                    continue
                score = d.score + m.score + (1.0 if d.fits and m.fits else 0.0)
                if score > best_score:
                    best, best_score = (d, m), score
        return best

    found = search(datasets[:shortlist], models[:shortlist])
    if found is None and (len(datasets) > shortlist or len(models) > shortlist):
        found = search(datasets, models)
    return found
