"""The agent's domain entry points: check the request, pick a planner, answer."""

from __future__ import annotations

import threading
from dataclasses import replace

from agent_svc.catalog import CoreCatalog, Snapshot
from agent_svc.gemini import GeminiPlanner, GeminiSettings
from agent_svc.planning import Index, Plan, Recommendation, build_spec, choose, recommend
from agent_svc.prompt import Intent, parse
from mesh.errors import FailedPrecondition, InvalidArgument, Unavailable

MAX_PROMPT = 4000
TASKS = ("classification", "segmentation", "detection", "regression")


def check_prompt(prompt: str) -> str:
    prompt = prompt.strip()
    if not prompt:
        raise InvalidArgument.field("prompt", "is empty: say what you want, e.g. \"map surface water in the Olinda scene\"")
    if len(prompt) > MAX_PROMPT:
        raise InvalidArgument.field("prompt", f"is {len(prompt)} characters; at most {MAX_PROMPT}")
    return prompt


def apply_constraints(intent: Intent, constraints: dict) -> Intent:
    """Structured constraints add to (and override) what the prompt says."""
    changes: dict = {}
    if constraints.get("sensors"):
        changes["sensors"] = {s.lower() for s in constraints["sensors"]}
    if constraints.get("bands"):
        changes["bands"] = intent.bands | {b.lower() for b in constraints["bands"]}
    if constraints.get("task"):
        changes["task"], changes["task_required"] = constraints["task"], True
    if constraints.get("region"):
        changes["region"], changes["place"] = constraints["region"], intent.place or "the requested region"
    for name in ("max_resolution_m", "max_latency_ms", "min_accuracy"):
        if constraints.get(name):
            changes[name] = float(constraints[name])
    return replace(intent, **changes)


class Agent:
    def __init__(self, catalog: CoreCatalog, export_uri: str, gemini: GeminiSettings | None) -> None:
        self.catalog = catalog
        self.export_uri = export_uri
        self.gemini = GeminiPlanner(gemini, catalog) if gemini else None
        self._index: Index | None = None
        self._lock = threading.Lock()

    def _index_for(self, snapshot: Snapshot) -> Index:
        with self._lock:
            if self._index is None or self._index.snapshot is not snapshot:
                self._index = Index(snapshot)
            return self._index

    def _planner(self, wanted: str) -> str:
        if wanted == "gemini" and self.gemini is None:
            raise FailedPrecondition("the Gemini planner needs an API key: set GEMINI_API_KEY in the agent's environment (or ask for the offline planner)")
        return wanted or ("gemini" if self.gemini else "offline")

    def recommend(self, prompt: str, constraints: dict, max_results: int, planner: str) -> Recommendation:
        prompt = check_prompt(prompt)
        if not 0 <= max_results <= 50:
            raise InvalidArgument.field("max_results", "must be between 0 (the default, 5) and 50")
        used = self._planner(planner)
        intent = apply_constraints(parse(prompt), constraints)
        result = recommend(intent, self._index_for(self.catalog.snapshot()), max_results or 5)
        result.planner = used  # the ranking is the same deterministic one for both planners
        return result

    def plan(self, prompt: str, constraints: dict, dataset_id: str, model_id: str, planner: str) -> Plan:
        prompt = check_prompt(prompt)
        used = self._planner(planner)
        intent = apply_constraints(parse(prompt), constraints)
        index = self._index_for(self.catalog.snapshot())
        if used == "gemini":
            assert self.gemini is not None
            return self.gemini.plan(prompt, intent, index, self.export_uri, dataset_id, model_id)
        recommendation = recommend(intent, index)
        spec, rationale = build_spec(choose(intent, recommendation, index.snapshot, dataset_id, model_id), self.export_uri)
        validation = self.catalog.validate(spec)
        if not validation.valid:  # a bug in the offline planner, not the user's fault
            raise Unavailable("the offline plan did not validate: " + "; ".join(p.description for p in validation.problems))
        return Plan(spec, rationale, recommendation, planner="offline")
