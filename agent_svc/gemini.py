"""The Gemini planner: google-genai with function calling into core's catalog, structured JSON
output, a repair loop fed by core's validation, and retries with backoff.

Gemini picks the dataset, model and tiling through two tools that read the
catalog (`find_datasets`, `find_models`) and answers in a JSON schema; the
spec is built from that choice and validated by core. Validation problems go
back to the model for at most `repairs` more turns. The API key is only ever
handed to the SDK: it never reaches a log line or a response.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from google import genai
from google.genai import errors, types

from agent_svc.catalog import CoreCatalog, Snapshot
from agent_svc.planning import Choice, Index, Plan, build_spec, recommend
from agent_svc.prompt import Intent
from mesh.errors import Unavailable

log = logging.getLogger("agent.gemini")

RETRYABLE = {408, 429, 500, 502, 503, 504}
CHOICE_SCHEMA = types.Schema(
    type=types.Type.OBJECT,
    properties={
        "dataset_id": types.Schema(type=types.Type.STRING, description="id of the chosen dataset, from find_datasets"),
        "model_id": types.Schema(type=types.Type.STRING, description="id of the chosen model, from find_models"),
        "tile_size_px": types.Schema(type=types.Type.INTEGER, description="tile edge in pixels; the model's input size"),
        "overlap_px": types.Schema(type=types.Type.INTEGER),
        "vectorize": types.Schema(type=types.Type.BOOLEAN, description="also write polygons (for masks)"),
        "threshold": types.Schema(type=types.Type.NUMBER),
        "rationale": types.Schema(
            type=types.Type.ARRAY,
            items=types.Schema(
                type=types.Type.OBJECT,
                properties={"block_id": types.Schema(type=types.Type.STRING), "reason": types.Schema(type=types.Type.STRING)},
                required=["block_id", "reason"],
            ),
        ),
    },
    required=["dataset_id", "model_id", "rationale"],
)
TOOLS = [
    types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="find_datasets",
                description="Datasets in the catalog matching optional filters.",
                parameters=types.Schema(
                    type=types.Type.OBJECT,
                    properties={
                        "sensor": types.Schema(type=types.Type.STRING),
                        "band": types.Schema(type=types.Type.STRING),
                        "text": types.Schema(type=types.Type.STRING, description="words to look for in names, descriptions and tags"),
                    },
                ),
            ),
            types.FunctionDeclaration(
                name="find_models",
                description="Models in the catalog matching optional filters.",
                parameters=types.Schema(
                    type=types.Type.OBJECT,
                    properties={
                        "task": types.Schema(type=types.Type.STRING, description="classification, segmentation, detection or regression"),
                        "text": types.Schema(type=types.Type.STRING),
                    },
                ),
            ),
        ]
    )
]
INSTRUCTIONS = (
    "You plan satellite-imagery pipelines for Constellation. Use find_datasets and find_models to look "
    "the catalog up; never invent ids. Choose one dataset and one model whose input bands the dataset has, "
    "then answer only with JSON in the response schema."
)


@dataclass(frozen=True)
class GeminiSettings:
    api_key: str
    model: str = "gemini-2.5-flash"
    base_url: str = ""
    attempts: int = 4
    backoff_s: float = 1.0
    repairs: int = 2
    max_tool_turns: int = 6


class GeminiPlanner:
    def __init__(self, settings: GeminiSettings, catalog: CoreCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        options = types.HttpOptions(base_url=settings.base_url, api_version="v1beta") if settings.base_url else None
        self.client = genai.Client(api_key=settings.api_key, http_options=options)

    def _generate(self, contents: list[types.Content], config: types.GenerateContentConfig) -> types.GenerateContentResponse:
        for attempt in range(1, self.settings.attempts + 1):
            try:
                return self.client.models.generate_content(model=self.settings.model, contents=contents, config=config)
            except errors.APIError as error:
                if error.code not in RETRYABLE or attempt == self.settings.attempts:
                    raise Unavailable(f"Gemini answered {error.code} after {attempt} attempt(s): {error.message or error.status}") from None
                log.warning("gemini retry", extra={"status": error.code, "attempt": attempt})
            except OSError as error:  # connection refused / reset: the network, not the request
                if attempt == self.settings.attempts:
                    raise Unavailable(f"Gemini could not be reached after {attempt} attempt(s): {error.__class__.__name__}") from None
            time.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _call_tool(self, call: types.FunctionCall, snapshot: Snapshot) -> dict:
        args = dict(call.args or {})
        text = str(args.get("text", "")).lower()
        if call.name == "find_datasets":
            found = [
                {"id": d.id, "name": d.name, "sensor": d.sensor, "bands": list(d.bands), "resolution_m": d.resolution_m, "description": d.description}
                for d in snapshot.datasets
                if (not args.get("sensor") or d.sensor == str(args["sensor"]).lower())
                and (not args.get("band") or str(args["band"]).lower() in d.bands)
                and (not text or any(w in d.text.lower() for w in text.split()))
            ]
            return {"datasets": found[:50]}
        if call.name == "find_models":
            found = [
                {"id": m.id, "name": m.name, "version": m.version, "task": m.task, "bands": list(m.bands), "tile_size_px": m.tile_size_px, "description": m.description, "metrics": m.metrics}
                for m in snapshot.models
                if (not args.get("task") or m.task == str(args["task"]).lower()) and (not text or any(w in m.text.lower() for w in text.split()))
            ]
            return {"models": found[:50]}
        return {"error": f"unknown function {call.name}"}

    def plan(self, prompt: str, intent: Intent, index: Index, export_uri: str, dataset_id: str = "", model_id: str = "") -> Plan:
        snapshot = index.snapshot
        pins = ""
        if dataset_id:
            pins += f" Use dataset {dataset_id}."
        if model_id:
            pins += f" Use model {model_id}."
        contents = [types.Content(role="user", parts=[types.Part(text=f"{prompt}{pins}")])]
        config = types.GenerateContentConfig(
            system_instruction=INSTRUCTIONS,
            tools=TOOLS,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            response_mime_type="application/json",
            response_schema=CHOICE_SCHEMA,
            temperature=0.0,
        )
        notes: list[str] = []
        repairs_left, turns = self.settings.repairs, 0
        while True:
            response = self._generate(contents, config)
            candidate = response.candidates[0].content if response.candidates else None
            if candidate is None:
                raise Unavailable("Gemini returned no candidate")
            contents.append(candidate)
            calls = response.function_calls or []
            if calls:
                turns += 1
                if turns > self.settings.max_tool_turns:
                    raise Unavailable(f"Gemini kept calling tools for {turns} turns without answering")
                contents.append(
                    types.Content(role="user", parts=[types.Part.from_function_response(name=c.name, response=self._call_tool(c, snapshot)) for c in calls])
                )
                notes.append(f"looked up {', '.join(c.name for c in calls)}")
                continue
            problem, plan = self._parse(response.text or "", snapshot, export_uri, intent, index)
            if plan is not None:
                validation = self.catalog.validate(plan.spec)
                if validation.valid:
                    plan.notes = notes
                    return plan
                problem = "core rejected the plan: " + "; ".join(f"{p.field}: {p.description}" for p in validation.problems)
            if repairs_left == 0:
                raise Unavailable(f"Gemini did not produce a valid plan after {self.settings.repairs} repair(s): {problem}")
            repairs_left -= 1
            notes.append(f"repair: {problem}")
            contents.append(types.Content(role="user", parts=[types.Part(text=f"That answer cannot be used: {problem}. Answer again with JSON in the schema.")]))

    def _parse(self, text: str, snapshot: Snapshot, export_uri: str, intent: Intent, index: Index) -> tuple[str, Plan | None]:
        try:
            data = json.loads(text)
            dataset_id, model_id = str(data["dataset_id"]), str(data["model_id"])
        except (ValueError, KeyError, TypeError) as error:
            return f"the reply is not JSON in the schema ({error.__class__.__name__}: {str(error)[:80]})", None
        datasets = {d.id: d for d in snapshot.datasets}
        models = {m.id: m for m in snapshot.models}
        if dataset_id not in datasets or model_id not in models:
            unknown = [i for i in (dataset_id, model_id) if i not in datasets and i not in models]
            return f"unknown id(s) {', '.join(unknown)}; use ids from find_datasets and find_models", None
        rationale = tuple((str(r.get("block_id", "")), str(r.get("reason", ""))) for r in data.get("rationale", []) if isinstance(r, dict))
        choice = Choice(
            dataset=datasets[dataset_id],
            model=models[model_id],
            tile_size_px=int(data.get("tile_size_px") or models[model_id].tile_size_px or 256),
            overlap_px=int(data.get("overlap_px", 16)),
            vectorize=bool(data.get("vectorize", models[model_id].task == "segmentation")),
            threshold=float(data.get("threshold", 0.5)),
            reasons=rationale,
        )
        spec, reasons = build_spec(choice, export_uri)
        return "", Plan(spec, reasons, recommend(intent, index), planner="gemini")
