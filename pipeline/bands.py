"""Band names: STAC `eo:common_name`s, the older names kept as aliases, and the one rule that matches bands.

A band has one canonical name, the STAC common name where STAC has one
(`swir16`, `lwir11`, `rededge071`...). The names the catalog used before STAC
(`swir1`, `tir1`, `rededge1`...) are aliases: the same band under another
name, accepted anywhere and matched as equal. A *near equivalent* is a
different band that serves in its place (a model trained on broad `nir` reads
Landsat 8's narrow `nir08`); those pairs come only from NEAR_EQUIVALENTS, and
whoever uses one says so (the agent's rationale, the validator's answer).

`match_bands` is the only place that decides whether a dataset's bands
satisfy the bands a model or block asks for: pipeline validation, core,
the orchestrator and the agent's planners all call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# STAC common names (eo extension and STAC 1.1 `bands`), plus the water-vapour band and SAR polarisations.
CANONICAL_BANDS = (
    "coastal", "blue", "green", "red", "yellow", "pan",
    "rededge", "rededge071", "rededge075", "rededge078",
    "nir", "nir08", "nir09", "water_vapor", "cirrus", "swir16", "swir22",
    "lwir", "lwir11", "lwir12",
    "vv", "vh", "hh", "hv",
)  # fmt: skip
# Older names -> the canonical name of the same band.
ALIASES = {
    "rededge1": "rededge071",
    "rededge2": "rededge075",
    "rededge3": "rededge078",
    "swir1": "swir16",
    "swir2": "swir22",
    "tir": "lwir",
    "tir1": "lwir11",
    "tir2": "lwir12",
}
# Canonical name asked for -> different bands that may stand in for it, best first, with why.
NEAR_EQUIVALENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "nir": (("nir08", "narrow near-infrared (0.85 µm) inside the broad nir band"),),
    "nir08": (("nir", "broad near-infrared band that contains 0.85 µm"),),
    "lwir": (("lwir11", "the 11 µm thermal band of a split-window sensor"),),
    "lwir11": (("lwir", "a single thermal band covering 11 µm"),),
    "rededge": (("rededge071", "the first red-edge band (0.71 µm)"),),
}
KNOWN_BANDS = frozenset(CANONICAL_BANDS) | frozenset(ALIASES)


def canonical(name: str) -> str:
    """The canonical name of a band given by any known name (case-insensitive); unknown names come back lowered."""
    lowered = name.strip().lower()
    return ALIASES.get(lowered, lowered)


def names_of(name: str) -> tuple[str, ...]:
    """Every name of a band: its canonical name first, then its aliases (a catalog filter matches any)."""
    key = canonical(name)
    return (key, *(alias for alias, target in ALIASES.items() if target == key))


@dataclass(frozen=True)
class Substitution:
    wanted: str  # as asked
    used: str  # the dataset's band, by the dataset's name for it
    reason: str

    def describe(self) -> str:
        return f"{self.used} stands in for {self.wanted} ({self.reason})"


@dataclass(frozen=True)
class BandMatch:
    """For each band asked for, the dataset's band that provides it (by the dataset's name), or why none does."""

    chosen: tuple[str | None, ...]
    missing: tuple[str, ...] = ()
    substitutions: tuple[Substitution, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return not self.missing


def match_bands(wanted: Sequence[str], available: Iterable[str], *, near: bool = True) -> BandMatch:
    """Match `wanted` bands against a dataset's `available` ones: the same band (any alias) first, then, when
    `near`, a near equivalent from NEAR_EQUIVALENTS (reported in `substitutions`)."""
    by_canonical: dict[str, str] = {}
    for name in available:
        by_canonical.setdefault(canonical(name), name)
    chosen: list[str | None] = []
    missing: list[str] = []
    substitutions: list[Substitution] = []
    for band in wanted:
        key = canonical(band)
        if key in by_canonical:
            chosen.append(by_canonical[key])
            continue
        stand_in = next(
            ((by_canonical[other], why) for other, why in NEAR_EQUIVALENTS.get(key, ()) if other in by_canonical),
            None,
        )
        if near and stand_in is not None:
            chosen.append(stand_in[0])
            substitutions.append(Substitution(band, stand_in[0], stand_in[1]))
        else:
            chosen.append(None)
            missing.append(band)
    return BandMatch(tuple(chosen), tuple(missing), tuple(substitutions))


def has_band(available: Iterable[str], band: str, *, near: bool = False) -> bool:
    return match_bands([band], available, near=near).complete


def servable(available: Iterable[str]) -> set[str]:
    """Canonical names of every band `available` can provide: its own, and those a near equivalent stands in for
    (the same answer as match_bands, as a set for fast filtering)."""
    own = {canonical(name) for name in available}
    return own | {wanted for wanted, others in NEAR_EQUIVALENTS.items() if any(o in own for o, _ in others)}
