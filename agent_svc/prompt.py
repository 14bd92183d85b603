"""Reading a plain-language goal: task, topic, sensors, bands, place and numeric limits.

Deterministic and dictionary-driven, so the offline planner gives the same
answer every time and tests can say exactly why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TASK_WORDS = {
    "segmentation": ("map", "mapping", "mask", "segment", "segmentation", "delineate", "extent", "outline", "flood", "inundation", "surface water", "water bodies"),
    "classification": ("classify", "classification", "land cover", "landcover", "land use", "label each", "categorise", "categorize", "crop type"),
    "detection": ("detect", "detection", "find ships", "count", "locate", "bounding box", "ships", "vessels", "buildings", "cars"),
    "regression": ("estimate", "regression", "predict the value", "biomass", "temperature", "height", "yield"),
}
TOPIC_WORDS = {
    "water": ("water", "flood", "flooding", "inundation", "lake", "lakes", "river", "rivers", "reservoir", "coast", "coastline", "shoreline", "wetland", "ndwi"),
    "vegetation": ("vegetation", "forest", "deforestation", "crop", "crops", "agriculture", "ndvi", "greenness", "trees"),
    "urban": ("urban", "city", "cities", "buildings", "built-up", "settlement", "roads"),
    "landcover": ("land cover", "landcover", "land use"),
    "ships": ("ship", "ships", "vessel", "vessels", "boats"),
    "burn": ("burn", "burned", "burnt", "fire", "wildfire"),
    "snow": ("snow", "ice", "glacier"),
}
SENSOR_WORDS = {
    "sentinel-2": ("sentinel-2", "sentinel 2", "sentinel2", "s2", "msi"),
    "sentinel-1": ("sentinel-1", "sentinel 1", "sentinel1", "s1", "sar", "radar"),
    "landsat-7": ("landsat 7", "landsat-7", "landsat7", "etm+", "etm"),
    "landsat-8": ("landsat 8", "landsat-8", "landsat8", "oli"),
    "landsat-9": ("landsat 9", "landsat-9", "landsat9"),
    "modis": ("modis",),
    "planetscope": ("planet", "planetscope"),
}
BAND_WORDS = {
    "nir": ("nir", "near-infrared", "near infrared", "infrared"),
    "swir1": ("swir1", "swir 1", "swir-1", "shortwave infrared", "short-wave infrared", "swir"),
    "swir2": ("swir2", "swir 2", "swir-2"),
    "red": ("red band", "red"),
    "green": ("green band", "green"),
    "blue": ("blue band", "blue"),
    "rededge1": ("red edge", "red-edge", "rededge"),
    "vv": ("vv",),
    "vh": ("vh",),
}
# A small gazetteer: place -> (min_lon, min_lat, max_lon, max_lat).
PLACES = {
    "olinda": (-34.95, -8.10, -34.80, -7.95),
    "recife": (-35.05, -8.20, -34.85, -7.95),
    "pernambuco": (-41.4, -9.5, -34.8, -7.3),
    "brazil": (-74.0, -34.0, -34.7, 5.3),
    "amazon": (-74.0, -10.0, -48.0, 2.0),
    "lisbon": (-9.25, 38.68, -9.08, 38.80),
    "portugal": (-9.6, 36.9, -6.2, 42.2),
    "rotterdam": (4.3, 51.85, 4.6, 52.0),
    "netherlands": (3.3, 50.7, 7.3, 53.6),
    "venice": (12.2, 45.35, 12.45, 45.5),
    "nile delta": (29.5, 30.0, 32.5, 31.6),
    "lake victoria": (31.5, -3.1, 34.9, 0.6),
    "bangladesh": (88.0, 20.6, 92.7, 26.6),
    "jakarta": (106.6, -6.4, 107.0, -6.0),
    "california": (-124.5, 32.5, -114.1, 42.0),
    "new orleans": (-90.2, 29.85, -89.9, 30.1),
    "mozambique": (30.2, -26.9, 40.9, -10.5),
    "beira": (34.75, -19.95, 34.95, -19.75),
    "sahara": (-17.0, 15.0, 35.0, 33.0),
    "alps": (5.0, 43.5, 16.5, 48.5),
}
NUMBER = r"(\d+(?:\.\d+)?)"


@dataclass
class Intent:
    text: str
    task: str = ""
    # A task read from the prompt's wording is a strong preference; one given
    # as a structured constraint is a requirement.
    task_required: bool = False
    topics: set[str] = field(default_factory=set)
    sensors: set[str] = field(default_factory=set)
    bands: set[str] = field(default_factory=set)
    place: str = ""
    region: tuple[float, float, float, float] | None = None
    max_resolution_m: float = 0.0
    max_latency_ms: float = 0.0
    min_accuracy: float = 0.0

    def describe(self) -> str:
        parts = []
        if self.task:
            parts.append(self.task)
        if self.topics:
            parts.append("topic " + "/".join(sorted(self.topics)))
        if self.sensors:
            parts.append("sensor " + " or ".join(sorted(self.sensors)))
        if self.bands:
            parts.append("bands " + ", ".join(sorted(self.bands)))
        if self.place:
            parts.append(f"over {self.place.title()}")
        if self.max_resolution_m:
            parts.append(f"resolution {self.max_resolution_m:g} m or finer")
        if self.max_latency_ms:
            parts.append(f"latency under {self.max_latency_ms:g} ms")
        if self.min_accuracy:
            parts.append(f"accuracy at least {self.min_accuracy:.0%}")
        return "; ".join(parts) or "no specific constraints"


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text) is not None


def parse(prompt: str) -> Intent:
    text = " ".join(prompt.lower().replace("_", " ").split())
    intent = Intent(text=text)
    # A phrase ("land cover") says more than a single word ("map").
    scores = {task: sum((2 if " " in w else 1) for w in words if _has(text, w)) for task, words in TASK_WORDS.items()}
    best = max(scores.values())
    if best:
        # Ties go to the order above: mapping water is segmentation before detection.
        intent.task = next(task for task, score in scores.items() if score == best)
    intent.topics = {topic for topic, words in TOPIC_WORDS.items() if any(_has(text, w) for w in words)}
    intent.sensors = {sensor for sensor, words in SENSOR_WORDS.items() if any(_has(text, w) for w in words)}
    if _has(text, "landsat") and not intent.sensors & {"landsat-7", "landsat-8", "landsat-9"}:
        intent.sensors |= {"landsat-7", "landsat-8", "landsat-9"}
    if _has(text, "sentinel") and not intent.sensors & {"sentinel-1", "sentinel-2"}:
        intent.sensors |= {"sentinel-1", "sentinel-2"}
    for band, words in BAND_WORDS.items():
        if any(_has(text, w) for w in words if " " in w or len(w) > 3 or w in ("nir", "vv", "vh")):
            if band in ("red", "green", "blue") and not re.search(rf"\b{band}\b[ -]?(band|channel)s?\b|\bbands?\b[^.]*\b{band}\b", text):
                continue  # "red" alone is usually a colour word, not a band request
            intent.bands.add(band)
    for place in sorted(PLACES, key=len, reverse=True):
        if _has(text, place):
            intent.place, intent.region = place, PLACES[place]
            break
    resolution = re.search(rf"{NUMBER}\s*(cm|centimetres?|centimeters?|m|metres?|meters?)\b", text)
    if resolution and re.search(r"resolution|gsd|pixel|finer|better|at least|or less", text):
        scale = 0.01 if resolution.group(2).startswith("c") else 1.0
        intent.max_resolution_m = float(resolution.group(1)) * scale
    latency = re.search(rf"{NUMBER}\s*(?:ms|milliseconds?)\b", text)
    if latency:
        intent.max_latency_ms = float(latency.group(1))
    accuracy = re.search(rf"(?:accuracy|accurate|iou|f1)[^0-9%]{{0,25}}{NUMBER}\s*(%?)|{NUMBER}\s*%\s*(?:accuracy|accurate|iou)", text)
    if accuracy:
        value = float(accuracy.group(1) or accuracy.group(3))
        intent.min_accuracy = value / 100 if accuracy.group(2) == "%" or accuracy.group(3) or value > 1 else value
    box = re.search(rf"(?:bbox|box|extent)\D{{0,12}}(-?{NUMBER[1:-1]})\s*,\s*(-?{NUMBER[1:-1]})\s*,\s*(-?{NUMBER[1:-1]})\s*,\s*(-?{NUMBER[1:-1]})", text)
    if box:
        values = tuple(float(box.group(i)) for i in range(1, 5))
        if values[0] < values[2] and values[1] < values[3]:
            intent.region, intent.place = values, intent.place or "the given bbox"
    return intent
