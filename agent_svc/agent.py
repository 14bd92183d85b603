"""The agent's front door: checks a query, picks the planner, and hands it over."""

from __future__ import annotations

import math

from agent_svc.domain import MAX_PROMPT_CHARS, MAX_RESULTS, Plan, Query, Recommendation
from agent_svc.planners import Planner
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument

NO_KEY = (
    "the Gemini planner needs an API key: set GEMINI_API_KEY in the agent's environment "
    "(optionally CONSTELLATION_AGENT_GEMINI_MODEL to choose the model) and restart the agent, "
    "or ask for PLANNER_OFFLINE"
)


def check_query(query: Query) -> None:
    found: list[FieldViolation] = []
    if not query.prompt.strip():
        found.append(
            FieldViolation("prompt", "is required: describe the goal in 1-4000 characters, e.g. 'map surface water'")
        )
    elif len(query.prompt) > MAX_PROMPT_CHARS:
        found.append(FieldViolation("prompt", f"is {len(query.prompt)} characters; at most {MAX_PROMPT_CHARS}"))
    if not 0 <= query.max_results <= MAX_RESULTS:
        found.append(FieldViolation("max_results", f"must be between 0 (meaning 5) and {MAX_RESULTS}"))
    c = query.constraints
    for name in ("max_resolution_m", "max_latency_ms", "min_accuracy"):
        value = getattr(c, name)
        if not math.isfinite(value) or value < 0:
            found.append(
                FieldViolation(f"constraints.{name}", "must be a finite number of at least 0 (0 means no limit)")
            )
    if math.isfinite(c.min_accuracy) and c.min_accuracy > 1:
        found.append(FieldViolation("constraints.min_accuracy", "is a fraction in [0, 1], e.g. 0.9 for 90%"))
    if c.region is not None:
        min_x, min_y, max_x, max_y = c.region
        if not all(math.isfinite(v) for v in c.region) or not (
            -180 <= min_x < max_x <= 180 and -90 <= min_y < max_y <= 90
        ):
            found.append(
                FieldViolation(
                    "constraints.region",
                    "must be an EPSG:4326 box with min_x < max_x in [-180, 180] and min_y < max_y in [-90, 90]",
                )
            )
    for i, name in enumerate(c.sensors):
        if not name.strip():
            found.append(FieldViolation(f"constraints.sensors[{i}]", "is empty"))
    for i, name in enumerate(c.bands):
        if not name.strip():
            found.append(FieldViolation(f"constraints.bands[{i}]", "is empty"))
    if found:
        raise InvalidArgument(found)


class Agent:
    def __init__(self, offline: Planner, gemini: Planner | None = None) -> None:
        self.offline = offline
        self.gemini = gemini

    def planner_for(self, requested: str) -> Planner:
        if requested == "gemini":
            if self.gemini is None:
                raise FailedPrecondition(NO_KEY)
            return self.gemini
        if requested == "offline":
            return self.offline
        return self.gemini or self.offline

    def recommend(self, query: Query) -> Recommendation:
        check_query(query)
        return self.planner_for(query.planner).recommend(query)

    def plan(self, query: Query) -> Plan:
        check_query(query)
        return self.planner_for(query.planner).plan(query)
