"""Deterministic reading of a plain-language prompt: what it asks for, and how firmly.

Hard constraints are what the prompt names outright: a sensor ("Landsat 8"),
bands ("NIR and SWIR"), a place from the gazetteer or a bbox of numbers, a
resolution ("better than 2 m"), a latency ("under 10 ms per tile"), an
accuracy ("IoU of at least 0.95"), or insisting on radar or optical. The task
the wording suggests ("count" -> detection) and a hint at clouds (-> radar)
are soft preferences: people say "classify crop types" and mean a per-pixel
map, so a verb should tilt the ranking, not veto an entry. Structured
constraints from the request add to and override what the prompt says.
"""

from __future__ import annotations

import calendar
import math
import re
from datetime import date

from agent_svc import text
from agent_svc.domain import Box, Constraints, Intent
from agent_svc.gazetteer import PLACES
from pipeline.bands import has_band as has_named_band

SENSOR_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bsentinel[\s_-]?([123])\b"), "sentinel-{0}"),
    (re.compile(r"\blandsat[\s_-]?([45789])\b"), "landsat-{0}"),
    (re.compile(r"\blandsat\b(?![\s_-]?\d)"), "landsat"),
    (re.compile(r"\bmodis\b"), "modis"),
    (re.compile(r"\bviirs\b"), "viirs"),
    (re.compile(r"\baster\b"), "aster"),
    (re.compile(r"\b(planetscope|superdove|planet labs)\b"), "planetscope"),
    (re.compile(r"\bworld[\s-]?view[\s_-]?([1-4])\b"), "worldview-{0}"),
    (re.compile(r"\bworld[\s-]?view\b(?![\s_-]?\d)"), "worldview"),
    (re.compile(r"\bnaip\b"), "naip"),
    (re.compile(r"\bspot[\s_-]?([67])\b"), "spot-{0}"),
    (re.compile(r"\bpleiades\b"), "pleiades"),
]
# Sensors that are radar; the rest are optical.
SAR_SENSORS = ("sentinel-1", "radarsat", "alos", "iceye", "capella", "terrasar")

BAND_WORDS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    (re.compile(r"\b(nir|near[\s-]?infra[\s-]?red)\b"), ("nir",)),
    (re.compile(r"\b(swir|short[\s-]?wave[\s-]?infra[\s-]?red)\b"), ("swir",)),
    (re.compile(r"\bred[\s-]?edge\b"), ("rededge",)),
    (re.compile(r"\b(thermal|tir|lwir|thermal[\s-]infra[\s-]?red)\b"), ("tir",)),
    (re.compile(r"\b(pan|panchromatic)\b"), ("pan",)),
    (re.compile(r"\b(rgb|true[\s-]colou?r)\b"), ("red", "green", "blue")),
    (re.compile(r"\b(vv|vh|hh|hv)\b"), ()),  # the polarisation itself
]
COLOUR_BANDS = re.compile(r"\b(coastal|blue|green|yellow|red|cirrus)\b")
MENTIONS_BANDS = re.compile(r"\b(bands?|channels?)\b")
# A requested family is met by any of its members.
BAND_FAMILIES = {
    "nir": ("nir", "nir08"),
    "swir": ("swir16", "swir22"),
    "rededge": ("rededge", "rededge071", "rededge075", "rededge078"),
    "tir": ("lwir", "lwir11", "lwir12"),
    "lwir": ("lwir", "lwir11", "lwir12"),
}
SAR_BANDS = frozenset({"vv", "vh", "hh", "hv"})

SAR_WORDS = re.compile(r"\b(sar|radar|backscatter|c[\s-]band|l[\s-]band|synthetic aperture|polari[sz]ations?)\b")
OPTICAL_WORDS = re.compile(r"\b(optical|multi[\s-]?spectral)\b")
NEGATION = re.compile(r"\b(not|no|won'?t|can'?t|cannot|without|avoid|isn'?t|doesn'?t|useless|never)\b")
CLOUD_HINTS = re.compile(
    r"\b(cloudy|overcast|cloud[\s-]penetrating|through (the )?clouds?|all[\s-]weather|at night|night[\s-]?time)\b"
)

MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
# "in June", "during june 2024", "June of 2024", "2024 June" ("may" only after in/during, as it is also a verb).
MONTH_WORDS = re.compile(
    r"\b(?:(?:in|during|for|of|from)\s+(?P<m1>" + "|".join(MONTHS) + r")(?:\s+(?:of\s+)?(?P<y1>(?:19|20)\d\d))?"
    r"|(?P<m2>" + "|".join(m for m in MONTHS if m != "may") + r")\s+(?:of\s+)?(?P<y2>(?:19|20)\d\d))\b"
)
ISO_RANGE = re.compile(r"\b(\d{4}-\d\d-\d\d)\s*(?:to|until|through|and|-|/|\.\.)\s*(\d{4}-\d\d-\d\d)\b")
LEAST_CLOUDY = re.compile(
    r"\b((least|less|lowest|minimum|fewest)\s+(cloudy|clouds?|cloud\s+cover|cloudiness)|clearest|cloud[\s-]?free"
    r"|cloudless|without\s+clouds?|no\s+clouds?)\b"
)

TASK_CUES: dict[str, list[tuple[re.Pattern[str], float]]] = {
    "detection": [
        (re.compile(r"\bdetect\w*"), 2.0),
        (re.compile(r"\bcount\w*|\bhow many\b"), 2.0),
        (re.compile(r"\bbounding[\s-]box\w*|\bboxes\b"), 3.0),
        (re.compile(r"\blocat(e|ing)\b|\bspot (the|all|every)\b"), 1.0),
    ],
    "segmentation": [
        (re.compile(r"\bsegment\w*"), 2.0),
        (re.compile(r"\bmasks?\b|\bextent\b|\bfootprints?\b|\bdelineat\w*|\boutlines?\b"), 2.0),
        (re.compile(r"\bmap\b|\bmapping\b|\bpolygons?\b|\bboundar(y|ies)\b"), 1.0),
    ],
    "classification": [
        (re.compile(r"\bclassif\w*|\bcategori[sz]\w*"), 2.0),
        (re.compile(r"\b(patch|scene|tile|chip|image)[\s-]level\b|\bper[\s-](tile|patch|chip|scene)\b"), 3.0),
    ],
    "regression": [
        (re.compile(r"\bregress\w*"), 3.0),
        (re.compile(r"\bestimat\w*|\bquantif\w*"), 1.0),
        (re.compile(r"\b(temperature|biomass|height|yield|moisture|depth|concentration|elevation)\b"), 1.0),
    ],
}
EXPLICIT_TASKS = {
    "segmentation": re.compile(r"\bsegmentation\b"),
    "detection": re.compile(r"\bobject detection\b"),
    "classification": re.compile(r"\b(scene|image|patch) classification\b"),
    "regression": re.compile(r"\bregression\b"),
}
VECTOR_WORDS = re.compile(r"\b(polygons?|vectors?|vectori[sz]\w*|geojson|shapefiles?|qgis|outlines?|footprints?)\b")
RASTER_ONLY = re.compile(
    r"\b(raster only|only (the|a) raster|just (the|a) raster|no vectors?|no polygons?|without (vectors?|polygons?))\b"
)
NO_PREVIEW = re.compile(r"\b(no (png|preview|quick[\s-]?look)s?)\b")

# A number starts where no digit precedes it, and its digits are taken atomically: without both, a run of
# digits that is not followed by a unit is retried from every position and every length (quadratic).
NUMBER = r"(?<!\d)(\d++(?:\.\d++)?)"
BBOX = re.compile(
    r"\b(?:bbox|bounding box|extent|box|area|region|within|inside|between|covering|lon/lat|coordinates)\b[^\d-]{0,20}"
    r"(-?\d+(?:\.\d+)?)\s*[,;\s]\s*(-?\d+(?:\.\d+)?)\s*[,;\s]\s*(-?\d+(?:\.\d+)?)\s*[,;\s]\s*(-?\d+(?:\.\d+)?)"
)
DISTANCE = re.compile(NUMBER + r"\s*(cm|centimet(?:er|re)s?|m|met(?:er|re)s?|km)\b")
RESOLUTION_CONTEXT = re.compile(
    r"resolution|gsd|pixel|better|finer|sharper|at least|or less|at most|no coarser|max|sampl"
)
SUB_METRE = re.compile(r"\bsub[\s-]?met(er|re)\b")
DURATION = re.compile(
    NUMBER
    + r"\s*(ms|milliseconds?|msec|s|secs?|seconds?)\b(\s*(per|a|each|/)\s*(tile|chip|patch|image|inference|request))?"
)
LATENCY_CONTEXT = re.compile(
    r"latenc|per tile|each tile|a tile|under|below|less than|faster|within|at most|max|quick|fast"
)
PERCENT = re.compile(NUMBER + r"\s*(%|percent)")
QUALITY = re.compile(r"\b(accura\w*|iou|f1|precision|recall|map|r2|score|miou|dice)\b")
QUALITY_VALUE = re.compile(
    r"\b(accuracy|iou|miou|f1|precision|recall|map|r2|dice)\b[^\d%]{0,25}(0?\.\d+|1\.0|0|1)\b(?!\s*%)"
)


def _negated(clause: str, match: re.Match[str]) -> bool:
    return bool(NEGATION.search(clause))


def _clauses(folded: str) -> list[str]:
    return [c for c in re.split(r"[.;,!?:\n]|\bbut\b|\bso\b", folded) if c.strip()]


def _sensors(folded: str, words: set[str] | None = None) -> list[str]:
    found: list[str] = []
    for pattern, template in SENSOR_PATTERNS:
        for match in pattern.finditer(folded):
            name = template.format(*match.groups())
            if words is not None:
                words.update(text.tokens(match.group(0)))
            if name not in found:
                found.append(name)
    return found


def _bands(folded: str, words: set[str]) -> list[str]:
    found: list[str] = []
    for pattern, bands in BAND_WORDS:
        for match in pattern.finditer(folded):
            words.update(text.tokens(match.group(0)))
            for band in bands or (match.group(1),):
                if band not in found:
                    found.append(band)
    if MENTIONS_BANDS.search(folded):
        for match in COLOUR_BANDS.finditer(folded):
            words.add(match.group(1))
            if match.group(1) not in found:
                found.append(match.group(1))
    return found


def _region(folded: str, words: set[str]) -> tuple[Box | None, str, list[tuple[int, int]]]:
    match = BBOX.search(folded)
    if match:
        min_x, min_y, max_x, max_y = (float(v) for v in match.groups())
        if -180 <= min_x < max_x <= 180 and -90 <= min_y < max_y <= 90:
            return (min_x, min_y, max_x, max_y), f"bbox {min_x:g},{min_y:g},{max_x:g},{max_y:g}", [match.span()]
    best: tuple[float, str, Box] | None = None
    for name, box in PLACES.items():
        if re.search(r"\b" + re.escape(name) + r"\b", folded):
            area = (box[2] - box[0]) * (box[3] - box[1])
            if best is None or area < best[0]:
                best = (area, name, box)
    if best is None:
        return None, "", []
    words.update(text.tokens(best[1]))
    return best[2], best[1].title(), []


def _resolution(folded: str) -> tuple[float, list[tuple[int, int]]]:
    for match in DISTANCE.finditer(folded):
        window = folded[max(0, match.start() - 40) : match.end() + 25]
        if not RESOLUTION_CONTEXT.search(window):
            continue
        value, unit = float(match.group(1)), match.group(2)
        metres = value / 100 if unit.startswith("c") else value * 1000 if unit == "km" else value
        if metres > 0:
            return metres, [match.span()]
    if SUB_METRE.search(folded):
        return 1.0, []
    return 0.0, []


def _latency(folded: str) -> tuple[float, list[tuple[int, int]]]:
    for match in DURATION.finditer(folded):
        window = folded[max(0, match.start() - 30) : match.end() + 20]
        if not LATENCY_CONTEXT.search(window):
            continue
        value, unit = float(match.group(1)), match.group(2)
        ms = value if unit.startswith("m") else value * 1000
        if ms > 0:
            return ms, [match.span()]
    return 0.0, []


def _accuracy(folded: str) -> tuple[float, list[tuple[int, int]]]:
    for match in PERCENT.finditer(folded):
        window = folded[max(0, match.start() - 30) : match.end() + 30]
        if QUALITY.search(window):
            value = float(match.group(1)) / 100
            if 0 < value <= 1:
                return value, [match.span()]
    found = QUALITY_VALUE.search(folded)
    if found:
        value = float(found.group(2))
        if 0 < value <= 1:
            return value, [found.span(2)]
    return 0.0, []


def _dates(folded: str, words: set[str]) -> tuple[tuple[date, date] | None, int, list[tuple[int, int]]]:
    """(date range, month of any year, spans read) from ISO ranges or month names."""
    iso = ISO_RANGE.search(folded)
    if iso:
        try:
            first, last = date.fromisoformat(iso.group(1)), date.fromisoformat(iso.group(2))
        except ValueError:
            first = last = None  # type: ignore[assignment]
        if first and last and first <= last:
            return (first, last), 0, [iso.span()]
    match = MONTH_WORDS.search(folded)
    if not match:
        return None, 0, []
    name, year = match.group("m1") or match.group("m2"), match.group("y1") or match.group("y2")
    words.add(name)
    month = MONTHS.index(name) + 1
    if not year:
        return None, month, [match.span()]
    first = date(int(year), month, 1)
    last = date(int(year), month, calendar.monthrange(int(year), month)[1])
    return (first, last), 0, [match.span()]


def _task_scores(folded: str) -> dict[str, float]:
    scores = {task: sum(w * len(p.findall(folded)) for p, w in cues) for task, cues in TASK_CUES.items()}
    return {task: s for task, s in scores.items() if s > 0}


def parse(prompt: str, structured: Constraints | None = None) -> Intent:
    """Read `prompt`; `structured` (the request's constraints) adds to and overrides it."""
    folded = text.fold(prompt)
    clauses = _clauses(folded)
    constraints = Constraints()
    notes: list[str] = []
    consumed: list[tuple[int, int]] = []

    constraint_words: set[str] = set()
    constraints.sensors = _sensors(folded, constraint_words)
    constraints.bands = _bands(folded, constraint_words)
    constraints.region, constraints.region_name, spans = _region(folded, constraint_words)
    consumed += spans
    constraints.max_resolution_m, spans = _resolution(folded)
    consumed += spans
    constraints.max_latency_ms, spans = _latency(folded)
    consumed += spans
    constraints.min_accuracy, spans = _accuracy(folded)
    consumed += spans
    constraints.date_range, constraints.month, spans = _dates(folded, constraint_words)
    consumed += spans
    for task, pattern in EXPLICIT_TASKS.items():
        if pattern.search(folded):
            constraints.task = task
            break

    negated_words: set[str] = set()
    for clause in clauses:
        for pattern, modality in ((SAR_WORDS, "sar"), (OPTICAL_WORDS, "optical")):
            for match in pattern.finditer(clause):
                constraint_words.update(text.tokens(match.group(0)))
                if _negated(clause, match):
                    negated_words.update(text.tokens(match.group(0)))
                    constraints.modality = "optical" if modality == "sar" else "sar"
                elif not constraints.modality:
                    constraints.modality = modality
    if any(b in SAR_BANDS for b in constraints.bands) or any(s in SAR_SENSORS for s in constraints.sensors):
        constraints.modality = constraints.modality or "sar"

    intent = Intent(prompt=prompt, constraints=constraints)
    intent.least_cloudy = bool(LEAST_CLOUDY.search(folded))
    if intent.least_cloudy:
        notes.append("the least cloudy scene (STAC eo:cloud_cover)")
    elif CLOUD_HINTS.search(folded) and not constraints.modality:
        intent.preferred_modality = "sar"
        notes.append("clouds or night suggest radar")
    kept = folded
    for start, end in sorted(consumed, reverse=True):
        kept = kept[:start] + " " + kept[end:]
    scores = _task_scores(kept)
    if scores and not constraints.task:
        intent.preferred_task = max(scores, key=lambda t: scores[t])
    if RASTER_ONLY.search(folded):
        intent.wants_vectors = False
    elif VECTOR_WORDS.search(folded):
        intent.wants_vectors = True
    intent.wants_preview = not NO_PREVIEW.search(folded)

    if structured is not None:
        apply_structured(constraints, structured)
    intent.constraints = constraints

    # Short numbers ("5" of "Landsat 5", "2" of "3-5 m") only add noise; years stay.
    words = [
        w
        for w in text.tokens(kept)
        if w not in text.STOPWORDS and w not in negated_words and not (w.isdigit() and len(w) < 4)
    ]
    intent.terms = text.expand(words)
    intent.model_terms = text.expand([w for w in words if w not in constraint_words])
    intent.shown = text.display_words(words)
    intent.notes = describe(constraints, intent.preferred_task) + notes
    return intent


def apply_structured(constraints: Constraints, structured: Constraints) -> None:
    """Structured constraints from the request replace what the prompt said, field by field."""
    if structured.sensors:
        constraints.sensors = [s.strip().lower() for s in structured.sensors]
    if structured.bands:
        constraints.bands = [b.strip().lower() for b in structured.bands]
    if structured.task:
        constraints.task = structured.task
    if structured.region is not None:
        constraints.region, constraints.region_name = (
            structured.region,
            structured.region_name or "the requested region",
        )
    for name in ("max_resolution_m", "max_latency_ms", "min_accuracy"):
        value = getattr(structured, name)
        if value:
            setattr(constraints, name, value)
    if structured.modality:
        constraints.modality = structured.modality
    if structured.date_range is not None:
        constraints.date_range, constraints.month = structured.date_range, 0


def describe(c: Constraints, preferred_task: str = "") -> list[str]:
    found = []
    if c.task:
        found.append(f"task {c.task}")
    elif preferred_task:
        found.append(f"task {preferred_task} (suggested by the wording)")
    if c.sensors:
        found.append("sensor " + " or ".join(c.sensors))
    if c.modality == "sar":
        found.append("radar (SAR) imagery")
    elif c.modality == "optical":
        found.append("optical imagery")
    if c.bands:
        found.append("bands " + ", ".join(c.bands))
    if c.region is not None:
        found.append(f"region {c.region_name or 'as given'}")
    if c.max_resolution_m:
        found.append(f"resolution {c.max_resolution_m:g} m or finer")
    if c.max_latency_ms:
        found.append(f"latency at most {c.max_latency_ms:g} ms per tile")
    if c.min_accuracy:
        found.append(f"accuracy at least {c.min_accuracy:g}")
    if c.date_range is not None or c.month:
        found.append(f"scenes {describe_dates(c)}")
    return found


def describe_dates(c: Constraints) -> str:
    """`from 2024-06-01 to 2024-06-30`, or `from June (any year)`."""
    if c.date_range is not None:
        return f"from {c.date_range[0]:%Y-%m-%d} to {c.date_range[1]:%Y-%m-%d}"
    return f"from {MONTHS[c.month - 1].title()} (any year)" if c.month else ""


def has_band(available: tuple[str, ...] | list[str], wanted: str) -> bool:
    """A requested band or family (`swir`) is met by any member, under any of its names (pipeline.bands)."""
    return any(has_named_band(available, b) for b in BAND_FAMILIES.get(wanted, (wanted,)))


def sensor_matches(sensor: str, wanted: str) -> bool:
    """`landsat` (a family) matches `landsat-8`; otherwise names must be equal."""
    sensor = sensor.lower()
    return sensor == wanted or ("-" not in wanted and sensor.startswith(wanted + "-"))


def sensors_in(text_: str) -> list[str]:
    """Sensors a free text (a model card) names."""
    return _sensors(text.fold(text_))


def box_overlap(a: Box, b: Box) -> float:
    """Area of a ∩ b as a fraction of b's area (0 when they only touch)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    area = (b[2] - b[0]) * (b[3] - b[1])
    return width * height / area if area > 0 else 0.0


def finite(value: float) -> bool:
    return math.isfinite(value)
