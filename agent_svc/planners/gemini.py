"""The Gemini planner: google-genai with structured output, function calling into core, and a repair loop.

Recommend: Gemini reads the prompt into a fixed JSON shape (structured output:
response_mime_type="application/json" with a response schema); the same
ranking as the offline planner then scores the catalog against that reading,
so scores and reasons mean the same whichever planner answered.

PlanPipeline, after that reading:
1. A tool phase: Gemini gets the shortlist and four functions that query core
   live (search_datasets, search_models, get_dataset, get_model) and calls
   them until it has what it needs (at most `max_tool_rounds` rounds). The
   tool phase and the JSON phase are separate calls because the Gemini API
   does not accept function declarations together with a JSON response
   schema on every model.
2. A JSON phase: Gemini returns the spec in the schema below. The schema has
   a `kind` field per block because OpenAPI schemas cannot express the
   proto's `oneof`; the JSON is parsed into the proto with json_format, so a
   client only ever gets a `PipelineSpec` message.
3. Repair: unparsable JSON, a JSON that does not fit the proto, or problems
   from core's ValidatePipeline are sent back to Gemini, which tries again,
   at most `max_repairs` times.

Every call is retried on 408/429/5xx and transport errors with exponential
backoff; when the attempts run out the RPC answers UNAVAILABLE. The API key
is handed to the SDK and to nothing else: it never reaches a log line, an
error message or a response.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from agent_svc import prompt as prompt_mod
from agent_svc import ranking, text
from agent_svc.catalog_client import CoreCatalog, LookupFailed
from agent_svc.domain import (
    TASKS,
    BlockReason,
    Box,
    Constraints,
    Intent,
    Plan,
    Query,
    Recommendation,
    Scene,
    least_cloud,
)
from agent_svc.planners.offline import check_pins, no_pair_reason
from constellation.common.v1 import common_pb2
from mesh.enums import prefix_of
from mesh.errors import FailedPrecondition, Unavailable
from pipeline.kinds import BLOCK_KINDS, KINDS

log = logging.getLogger("agent.gemini")

MAX_BRIEF_SCENES = 50  # of a dataset's STAC scenes, shown to Gemini by get_dataset / search_datasets
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _transport_errors() -> tuple[type[Exception], ...]:
    """The SDK talks through httpx or its fork httpx2, whichever is installed; both raise HTTPError subclasses."""
    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name).HTTPError)
        except ImportError:
            pass
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors()


@dataclass(frozen=True)
class GeminiSettings:
    api_key: str = field(repr=False)
    model: str = "gemini-2.5-flash"
    base_url: str = ""  # empty: the SDK's default endpoint
    timeout_s: float = 60.0
    attempts: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 16.0
    max_repairs: int = 3
    max_tool_rounds: int = 6


def _obj(properties: dict[str, Any], required: list[str] | None = None, description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "OBJECT", "properties": properties}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


STRING = {"type": "STRING"}
NUMBER = {"type": "NUMBER"}
INTEGER = {"type": "INTEGER"}
STRINGS = {"type": "ARRAY", "items": STRING}

READING_SCHEMA = _obj(
    {
        "task": {"type": "STRING", "enum": ["", *TASKS], "description": "the model task the goal needs, or empty"},
        "sensors": {**STRINGS, "description": "sensors the user names, lowercase like sentinel-2, landsat-8"},
        "bands": {
            **STRINGS,
            "description": "bands the user requires: blue, green, red, nir, swir, rededge, tir, vv, vh, or STAC "
            "common names such as nir08, swir16, swir22, lwir11, rededge071",
        },
        "modality": {
            "type": "STRING",
            "enum": ["", "sar", "optical"],
            "description": "only if the user insists on radar or optical",
        },
        "place": {**STRING, "description": "the named place, or empty"},
        "bbox": _obj(
            {"min_x": NUMBER, "min_y": NUMBER, "max_x": NUMBER, "max_y": NUMBER},
            description="lon/lat box of the place, if any",
        ),
        "max_resolution_m": {
            **NUMBER,
            "description": "coarsest acceptable ground sample distance in metres; 0 if not said",
        },
        "max_latency_ms": {**NUMBER, "description": "slowest acceptable model latency per tile in ms; 0 if not said"},
        "min_accuracy": {**NUMBER, "description": "lowest acceptable accuracy/IoU/F1 in [0, 1]; 0 if not said"},
        "keywords": {**STRINGS, "description": "what to look for in catalog text: the phenomenon, objects, synonyms"},
        "wants_vectors": {"type": "BOOLEAN", "description": "true if the user wants polygons/vectors"},
        "start_date": {
            **STRING,
            "description": "first acquisition date the user allows, YYYY-MM-DD; empty if not said",
        },
        "end_date": {**STRING, "description": "last acquisition date the user allows, YYYY-MM-DD; empty if not said"},
        "least_cloudy": {"type": "BOOLEAN", "description": "true if the user wants the least cloudy / clearest scene"},
    },
    ["keywords"],
)

_SCALARS = {
    FieldDescriptor.TYPE_STRING: STRING,
    FieldDescriptor.TYPE_BOOL: {"type": "BOOLEAN"},
    FieldDescriptor.TYPE_FLOAT: NUMBER,
    FieldDescriptor.TYPE_DOUBLE: NUMBER,
    FieldDescriptor.TYPE_INT32: INTEGER,
    FieldDescriptor.TYPE_INT64: INTEGER,
    FieldDescriptor.TYPE_UINT32: INTEGER,
    FieldDescriptor.TYPE_UINT64: INTEGER,
}


def _config_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of a block kind's config, read from its proto message (the contract), so a new kind
    needs nothing here."""
    message = common_pb2.Block.DESCRIPTOR.fields_by_name[kind].message_type
    if message is None:
        raise ValueError(f"Block.{kind} is not a message")
    properties: dict[str, Any] = {}
    for proto_field in message.fields:
        if proto_field.enum_type is not None:
            names = [v.name for v in proto_field.enum_type.values if v.number != 0]
            schema: dict[str, Any] = {"type": "STRING", "enum": names}
        else:
            schema = _SCALARS[proto_field.type]
        properties[proto_field.name] = {"type": "ARRAY", "items": schema} if proto_field.is_repeated else schema
    return _obj(properties)


SPEC_SCHEMA = _obj(
    {
        "blocks": {
            "type": "ARRAY",
            "items": _obj(
                {
                    "id": STRING,
                    "label": STRING,
                    "kind": {"type": "STRING", "enum": list(BLOCK_KINDS)},
                    **{kind: _config_schema(kind) for kind in BLOCK_KINDS},
                },
                ["id", "kind"],
            ),
        },
        "edges": {
            "type": "ARRAY",
            "items": _obj(
                {"source_block_id": STRING, "target_block_id": STRING}, ["source_block_id", "target_block_id"]
            ),
        },
        "rationale": {"type": "ARRAY", "items": _obj({"block_id": STRING, "reason": STRING}, ["block_id", "reason"])},
    },
    ["blocks", "edges", "rationale"],
)

FILTER_PARAMS = {
    "search_datasets": ("sensor", "band", "tag", "name"),
    "search_models": ("task", "band", "tag", "name"),
}
TOOLS = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="search_datasets",
            description="List datasets in the catalog, optionally only those with a sensor, a band, a tag or a name.",
            parameters_json_schema={
                "type": "object",
                "properties": {k: {"type": "string"} for k in FILTER_PARAMS["search_datasets"]},
            },
        ),
        types.FunctionDeclaration(
            name="search_models",
            description="List models in the catalog, optionally only those with a task (segmentation, detection, "
            "classification, regression), an input band, a tag or a name.",
            parameters_json_schema={
                "type": "object",
                "properties": {k: {"type": "string"} for k in FILTER_PARAMS["search_models"]},
            },
        ),
        types.FunctionDeclaration(
            name="get_dataset",
            description="One dataset by id: sensor, bands, resolution, footprint.",
            parameters_json_schema={"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        ),
        types.FunctionDeclaration(
            name="get_model",
            description="One model by id: task, input bands and tile size, metrics.",
            parameters_json_schema={"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        ),
    ]
)

READ_INSTRUCTION = (
    "You read requests for satellite-imagery analysis and return what they ask for, as JSON in the given schema. "
    "Fill a field only when the request says it; leave numbers 0 and lists empty otherwise."
)
PLAN_INSTRUCTION = (
    "You plan Constellation pipelines. A pipeline is a DAG: dataset -> tile -> model -> stitch -> (vectorize) -> "
    "export; band math that needs no model (water by NDWI or MNDWI, vegetation by NDVI, burns by NBR) is dataset -> "
    "index -> (vectorize) -> export. A dataset of many scenes (dates) runs once per scene; for a time series "
    "(e.g. water area per date) add a summary block after the index or stitch, with an export block of its own. "
    "Use only dataset and model ids that exist in core's catalog: look them up "
    "with the functions instead "
    "of guessing. The dataset must have every band the model reads; the tile size must be 0 or the model's tile "
    "size; overlap must be less than half the tile size; block ids are lowercase letters, digits, '-' and '_'."
)


class GeminiPlanner:
    name = "gemini"

    def __init__(self, catalog: CoreCatalog, settings: GeminiSettings, export_base: str) -> None:
        self.catalog = catalog
        self.settings = settings
        self.export_base = export_base
        # v1beta: the Gemini API version with response schemas and function calling on every model.
        options = types.HttpOptions(
            timeout=int(settings.timeout_s * 1000), base_url=settings.base_url or None, api_version="v1beta"
        )
        self._client = genai.Client(api_key=settings.api_key, http_options=options)

    # -- calls -----------------------------------------------------------------

    def _redact(self, message: str) -> str:
        key = self.settings.api_key
        return message.replace(key, "[redacted]") if key else message

    def _generate(
        self, contents: list[types.Content], config: types.GenerateContentConfig
    ) -> types.GenerateContentResponse:
        """One generateContent call, retried with exponential backoff on 408/429/5xx and transport errors."""
        last = ""
        for attempt in range(1, self.settings.attempts + 1):
            try:
                return self._client.models.generate_content(model=self.settings.model, contents=contents, config=config)
            except genai_errors.APIError as error:
                if error.code not in RETRYABLE_STATUS:
                    raise self._refusal(error) from None
                last = f"HTTP {error.code} {error.status or ''}".strip()
            except TRANSPORT_ERRORS as error:
                last = f"{type(error).__name__}"
            if attempt < self.settings.attempts:
                delay = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2  # jitter, so concurrent agents do not retry in step
                log.warning(
                    "gemini call failed; retrying",
                    extra={"attempt": attempt, "error": last, "delay_s": round(delay, 3)},
                )
                time.sleep(delay)
        raise Unavailable(
            f"Gemini ({self.settings.model}) did not answer after {self.settings.attempts} attempts (last: {last}); "
            "try again later or ask for PLANNER_OFFLINE"
        )

    def _refusal(self, error: genai_errors.APIError) -> FailedPrecondition:
        if error.code in (401, 403):
            return FailedPrecondition(f"Gemini refused the API key (HTTP {error.code}); check GEMINI_API_KEY")
        if error.code == 404:
            return FailedPrecondition(
                f"Gemini has no model {self.settings.model!r} (HTTP 404); set CONSTELLATION_AGENT_GEMINI_MODEL"
            )
        detail = self._redact(str(error.message or error.status or ""))[:300]
        return FailedPrecondition(f"Gemini rejected the request (HTTP {error.code}): {detail}")

    def _json_call(self, contents: list[types.Content], instruction: str, schema: dict[str, Any], parse, what: str):
        """Ask for JSON in `schema`; feed `parse`'s complaints back until it accepts or repairs run out."""
        config = types.GenerateContentConfig(
            system_instruction=instruction,
            response_mime_type="application/json",
            response_schema=schema,
            temperature=0.0,
        )
        problems: list[str] = []
        for attempt in range(self.settings.max_repairs + 1):
            response = self._generate(contents, config)
            answer = _text_of(response)
            try:
                data = json.loads(answer) if answer else None
            except json.JSONDecodeError as error:
                problems = [f"the answer is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"]
            else:
                if not isinstance(data, dict):
                    problems = ["the answer must be one JSON object in the given schema"]
                else:
                    result, problems = parse(data)
                    if not problems:
                        return result
            log.info(
                "gemini answer not usable; asking for a repair",
                extra={"what": what, "attempt": attempt + 1, "problems": len(problems)},
            )
            contents = [
                *contents,
                types.Content(role="model", parts=[types.Part(text=answer or "(empty)")]),
                types.Content(
                    role="user",
                    parts=[
                        types.Part(
                            text="That answer cannot be used:\n- "
                            + "\n- ".join(problems)
                            + "\nReturn a corrected answer, JSON only, in the same schema."
                        )
                    ],
                ),
            ]
        raise FailedPrecondition(
            f"Gemini gave no usable {what} after {self.settings.max_repairs} repairs; last problems: "
            + "; ".join(problems)[:1500]
            + ". Try PLANNER_OFFLINE, or pin dataset_id and model_id"
        )

    # -- Recommend ---------------------------------------------------------------

    def read(self, query: Query) -> Intent:
        contents = [types.Content(role="user", parts=[types.Part(text=query.prompt)])]
        return self._json_call(
            contents, READ_INSTRUCTION, READING_SCHEMA, lambda d: _intent_from_reading(query, d), "prompt reading"
        )

    def recommend(self, query: Query) -> Recommendation:
        intent = self.read(query)
        snapshot = self.catalog.snapshot()
        return ranking.rank(snapshot.index, intent, query.max_results, planner=self.name)

    # -- PlanPipeline ------------------------------------------------------------

    def plan(self, query: Query) -> Plan:
        intent = self.read(query)
        snapshot = self.catalog.snapshot()
        check_pins(snapshot, query)
        recommendation = ranking.rank(
            snapshot.index, intent, query.max_results, query.dataset_id, query.model_id, planner=self.name
        )
        if recommendation.best_pair is None:
            raise FailedPrecondition(f"cannot build a pipeline: {no_pair_reason(snapshot, query, recommendation)}")

        contents = [types.Content(role="user", parts=[types.Part(text=self._brief(query, recommendation))])]
        contents = self._tool_phase(contents)
        contents.append(
            types.Content(
                role="user",
                parts=[
                    types.Part(
                        text="Now return the pipeline as JSON in the schema: blocks, edges, and one rationale "
                        "entry per block."
                    )
                ],
            )
        )

        def parse(data: dict[str, Any]) -> tuple[tuple[common_pb2.PipelineSpec, list[BlockReason]] | None, list[str]]:
            spec, rationale, problems = spec_from_json(data)
            if problems:
                return None, problems
            validation = self.catalog.validate(spec)
            if not validation.valid:
                return None, ["core's ValidatePipeline says: " + p for p in validation.problems]
            return (spec, rationale), []

        spec, rationale = self._json_call(contents, PLAN_INSTRUCTION, SPEC_SCHEMA, parse, "pipeline spec")
        return Plan(spec, rationale, recommendation, self.name)

    def _brief(self, query: Query, recommendation: Recommendation) -> str:
        lines = [f"Goal: {query.prompt}"]
        if query.dataset_id:
            lines.append(f"Use dataset {query.dataset_id} (pinned by the user).")
        if query.model_id:
            lines.append(f"Use model {query.model_id} (pinned by the user).")
        lines.append("Shortlist from the catalog ranking (id: name, score):")
        scenes = {d.id: d.scenes for d in self.catalog.snapshot().catalog.datasets}
        lines += [
            f"- dataset {c.id}: {c.name}, {c.score:.2f}{_scene_summary(scenes.get(c.id, ()))}"
            for c in recommendation.datasets
        ]
        lines += [f"- model {c.id}: {c.name}, {c.score:.2f}" for c in recommendation.models]
        lines.append(f"Export results under {self.export_base.rstrip('/')}/<a short name>.")
        return "\n".join(lines)

    def _tool_phase(self, contents: list[types.Content]) -> list[types.Content]:
        config = types.GenerateContentConfig(
            system_instruction=PLAN_INSTRUCTION,
            tools=[TOOLS],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            temperature=0.0,
        )
        for _ in range(self.settings.max_tool_rounds):
            response = self._generate(contents, config)
            calls = response.function_calls or []
            content = response.candidates[0].content if response.candidates and response.candidates[0].content else None
            if content is not None:
                contents = [*contents, content]
            if not calls:
                return contents
            parts = [
                types.Part.from_function_response(name=call.name or "", response=self._run_tool(call)) for call in calls
            ]
            contents = [*contents, types.Content(role="user", parts=parts)]
        return contents

    def _run_tool(self, call: types.FunctionCall) -> dict[str, Any]:
        args = {k: str(v) for k, v in (call.args or {}).items() if v not in (None, "")}
        log.info("gemini tool call", extra={"tool": call.name, "arg_names": sorted(args)})
        try:
            if call.name in FILTER_PARAMS:
                terms = [f'{k} = "{args[k].replace(chr(34), "")}"' for k in FILTER_PARAMS[call.name] if k in args]
                if call.name == "search_datasets":
                    return {"datasets": [_brief_dataset(d) for d in self.catalog.find_datasets(" AND ".join(terms))]}
                return {"models": [_brief_model(m) for m in self.catalog.find_models(" AND ".join(terms))]}
            if call.name == "get_dataset":
                return {"dataset": _brief_dataset(self.catalog.get_dataset(args.get("id", "")))}
            if call.name == "get_model":
                return {"model": _brief_model(self.catalog.get_model(args.get("id", "")))}
        except LookupFailed as error:
            return {"error": str(error)}
        return {
            "error": f"no function named {call.name!r}; use search_datasets, search_models, get_dataset or get_model"
        }


def _scene_summary(scenes: tuple[Scene, ...]) -> str:
    """`; 3 scenes 2024-06-03..2024-07-05, least cloud 0%` for a STAC dataset, else nothing."""
    if not scenes:
        return ""
    first, last = min(s.acquired for s in scenes), max(s.acquired for s in scenes)
    cover = least_cloud(list(scenes))
    cloud = f", least cloud {cover:g}%" if cover is not None else ""
    return f"; {len(scenes)} scene(s) {first:%Y-%m-%d}..{last:%Y-%m-%d}{cloud}"


def _text_of(response: types.GenerateContentResponse) -> str:
    parts = response.candidates[0].content.parts if response.candidates and response.candidates[0].content else None
    return "".join(p.text for p in parts or [] if p.text and not p.thought)


def _brief_dataset(d: Any) -> dict[str, Any]:
    """A dataset for Gemini: its fields, and of its STAC scenes only when and how cloudy (at most 50), not files."""
    data = json_format.MessageToDict(d, preserving_proto_field_name=True)
    brief = {k: v for k, v in data.items() if k not in ("create_time", "update_time", "items")}
    if d.items:
        brief["item_count"] = len(d.items)
        brief["items"] = [
            {k: v for k, v in item.items() if k in ("id", "acquired_time", "cloud_cover")}
            for item in data["items"][:MAX_BRIEF_SCENES]
        ]
    return brief


def _brief_model(m: Any) -> dict[str, Any]:
    data = json_format.MessageToDict(m, preserving_proto_field_name=True)
    return {k: v for k, v in data.items() if k not in ("create_time", "update_time", "source", "state_message")}


def _number(data: dict[str, Any], name: str) -> float:
    value = data.get(name) or 0
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value > 0 else 0.0


def _intent_from_reading(query: Query, data: dict[str, Any]) -> tuple[Intent | None, list[str]]:
    """Gemini's reading -> an Intent; the request's structured constraints still override it."""
    problems = []
    raw_keywords = data.get("keywords")
    keywords: list[str] = []
    if isinstance(raw_keywords, list) and all(isinstance(k, str) for k in raw_keywords):
        keywords = raw_keywords
    else:
        problems.append("keywords must be a list of strings")
    task = data.get("task") or ""
    if task not in ("", *TASKS):
        problems.append(f"task must be one of {', '.join(TASKS)} or empty")
    box: Box | None = None
    raw_box = data.get("bbox")
    if isinstance(raw_box, dict) and raw_box:
        try:
            box = (float(raw_box["min_x"]), float(raw_box["min_y"]), float(raw_box["max_x"]), float(raw_box["max_y"]))
        except (KeyError, TypeError, ValueError):
            problems.append("bbox needs numbers min_x, min_y, max_x, max_y")
        else:
            if not (-180 <= box[0] < box[2] <= 180 and -90 <= box[1] < box[3] <= 90):
                problems.append("bbox must be longitudes in [-180, 180] and latitudes in [-90, 90] with min below max")
    window = None
    raw_dates = (data.get("start_date") or "", data.get("end_date") or "")
    if any(raw_dates):
        try:
            first, last = (date.fromisoformat(str(d)) for d in raw_dates)
        except ValueError:
            problems.append("start_date and end_date must both be YYYY-MM-DD dates")
        else:
            if first > last:
                problems.append("start_date must not be after end_date")
            window = (first, last)
    if problems:
        return None, problems
    constraints = Constraints(
        sensors=[str(s).lower() for s in data.get("sensors") or []],
        bands=[str(b).lower() for b in data.get("bands") or []],
        region=box,
        region_name=str(data.get("place") or "") if box else "",
        max_resolution_m=_number(data, "max_resolution_m"),
        max_latency_ms=_number(data, "max_latency_ms"),
        min_accuracy=min(_number(data, "min_accuracy"), 1.0),
        modality=str(data.get("modality")) if data.get("modality") in ("sar", "optical") else "",
        date_range=window,
    )
    prompt_mod.apply_structured(constraints, query.constraints)
    words = [w for k in keywords for w in text.tokens(k) if w not in text.STOPWORDS]
    place_words = set(text.tokens(constraints.region_name))
    intent = Intent(prompt=query.prompt, constraints=constraints, preferred_task=task if not constraints.task else "")
    intent.terms = text.expand(words + sorted(place_words))
    intent.model_terms = text.expand([w for w in words if w not in place_words])
    intent.shown = text.display_words(words + sorted(place_words))
    if isinstance(data.get("wants_vectors"), bool):
        intent.wants_vectors = data["wants_vectors"]
    intent.least_cloudy = data.get("least_cloudy") is True
    intent.notes = prompt_mod.describe(constraints, intent.preferred_task) + ["read by Gemini"]
    return intent, []


def spec_from_json(data: dict[str, Any]) -> tuple[common_pb2.PipelineSpec, list[BlockReason], list[str]]:
    """Gemini's JSON -> a PipelineSpec; problems say what does not fit the proto."""
    spec = common_pb2.PipelineSpec()
    problems: list[str] = []
    for i, raw in enumerate(data.get("blocks") or []):
        if not isinstance(raw, dict):
            problems.append(f"blocks[{i}] must be an object")
            continue
        kind = raw.get("kind")
        if kind not in BLOCK_KINDS:
            problems.append(f"blocks[{i}].kind must be one of {', '.join(BLOCK_KINDS)}")
            continue
        block = {"id": raw.get("id", ""), "label": raw.get("label", ""), kind: raw.get(kind) or {}}
        for config_field, enum_type in KINDS[kind].config.ENUMS.items():  # enum values may come without their prefix
            config, prefix = block[kind], prefix_of(enum_type)
            if not isinstance(config, dict):
                continue
            value = config.get(config_field)
            if isinstance(value, list) or (value is None and kind == "export"):
                names = [v if v.startswith(prefix) else prefix + v for v in value or [] if isinstance(v, str)]
                block[kind] = {**config, config_field: names}
            elif isinstance(value, str) and not value.startswith(prefix):
                block[kind] = {**config, config_field: prefix + value}
        try:
            json_format.ParseDict(block, spec.blocks.add())
        except json_format.ParseError as error:
            problems.append(f"blocks[{i}] ({kind}): {error}")
    for j, raw in enumerate(data.get("edges") or []):
        try:
            json_format.ParseDict(raw, spec.edges.add())
        except (json_format.ParseError, AttributeError) as error:
            problems.append(f"edges[{j}]: {error}")
    rationale = [
        BlockReason(str(r.get("block_id", "")), str(r.get("reason", "")))
        for r in data.get("rationale") or []
        if isinstance(r, dict)
    ]
    if not spec.blocks and not problems:
        problems.append("blocks is empty: a pipeline needs dataset, tile, model, stitch and export blocks")
    return spec, rationale, problems
