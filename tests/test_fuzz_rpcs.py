"""Property-based fuzzing of every RPC of the mesh through its gateway: no request, however malformed, may get
UNKNOWN or INTERNAL (or UNIMPLEMENTED from a method that exists), keep a unary call past its deadline, stop a
service's health from being SERVING, or end a process.

The methods and their request messages come from the generated descriptors (the services of
`mesh.services.SERVICES` and grpc.health.v1.Health), so a method added later is fuzzed without a change here.
Each method gets three kinds of input:

- random requests drawn from the request's descriptor: every scalar type at its bounds, enum numbers the enum
  does not define, strings that are huge, unicode, NULs, paths out of the roots, filter-like text; repeated
  fields and maps short and over the mesh's limits; nested messages; oneofs;
- mutated valid requests: a small valid request (with ids of the catalog seeded below) with fields replaced,
  cleared or repeated, so the fuzzing reaches past the first check;
- garbage bodies: random bytes and valid encodings with bytes flipped, cut or inserted.

Every call goes through the gateway with grpc's default client limits, so an answer whose trailers a client
would refuse (RESOURCE_EXHAUSTED "metadata size") counts as lost, like UNKNOWN or INTERNAL. Streams are read for
STREAM_DEADLINE_S; DEADLINE_EXCEEDED is how a healthy stream ends here. Reflection (a bidirectional stream for
grpcurl, served by grpc itself) is not fuzzed.

One mesh (`constellation up`, local runtime, one admin key, no gateway rate limit) serves the whole module. Its
catalog holds a dataset whose scene does not exist and a model whose source does not exist, and hosting takes
sources only from a folder of the test's own (an empty and a broken model folder), so a run fails fast and
nothing ever packages or deploys a real model. Examples are derandomized: CI makes the same calls each time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from constellation.agent.v1 import agent_pb2
from constellation.common.v1 import common_pb2 as c
from constellation.core.v1 import audit_pb2, core_pb2, identity_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation.orchestrator.v1 import orchestrator_pb2
from constellation_sdk import mesh_process
from mesh.identity import SERVICE_ROLE
from mesh.roles import required_role
from mesh.services import SERVED_BY, SERVICES, channel_options
from pipeline import mlm
from tests.catalog_data import LANDSAT_BANDS, ndwi_model, water_spec
from tests.conftest import MEASURED_FIGURES, mesh_env

ADMIN_KEY = "fuzz-admin-key"
METADATA = (("authorization", f"Bearer {ADMIN_KEY}"),)
# Internal methods (mesh.roles: Authenticate, LaunchRun) are fuzzed with the service key, so the fuzzing gets
# past their role check.
SERVICE_KEY = "fuzz-service-key"
SERVICE_METADATA = (("authorization", f"Bearer {SERVICE_KEY}"),)
UNARY_DEADLINE_S = 15.0  # a unary call still unanswered after this is a finding, not a pass
STREAM_DEADLINE_S = 1.0
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED}
MAX_DEPTH = 5  # nested messages below this are left empty (no request message nests deeper today)
LONG_LENGTHS = (65, 257, 1025)  # just over the tags/bands, blocks and any-repeated-field limits of mesh.limits
SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)
# Examples per method and kind, sized so the module stays within its CI budget on a 2-core machine.
RANDOM_EXAMPLES = 150
MUTATED_EXAMPLES = 200
GARBAGE_EXAMPLES = 30
STREAM_EXAMPLES = 8  # each may hold STREAM_DEADLINE_S


# --------------------------------------------------------------------------- the methods, from the descriptors


@dataclass(frozen=True)
class Method:
    path: str  # "/package.Service/Name"
    request: Descriptor
    response: Descriptor
    streaming: bool

    def __str__(self) -> str:
        return self.path.removeprefix("/").replace("constellation.", "")

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.request)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.response)


def mesh_methods() -> list[Method]:
    pool = descriptor_pool.Default()
    services = [pool.FindServiceByName(name) for name, _ in SERVICES.values()]
    services.append(health_pb2.DESCRIPTOR.services_by_name["Health"])
    return [
        Method(f"/{service.full_name}/{m.name}", m.input_type, m.output_type, m.server_streaming)
        for service in services
        for m in service.methods
    ]


METHODS = mesh_methods()
BY_NAME = {str(method): method for method in METHODS}


# --------------------------------------------------------------------------- requests from descriptors

# Model sources under the fuzz mesh's own model root: one missing, one without a manifest, one with a broken one.
MODEL_ROOT_NAME = "model-sources"
TEMP = tempfile.gettempdir()
NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    f"{TEMP}/a\x00b",
    f"file://{TEMP}/a\x00b.tif",
    "../../../../etc/passwd",
    "/etc/passwd",
    "file:///etc/passwd",
    "file:///dev/zero",
    "file://" + TEMP + "/../etc/shadow",
    "file:relative/path.tif",
    f"{TEMP}/fuzz-missing.tif",
    "s3://",
    "s3://bucket/../../key.tif",
    "s3://" + "b" * 300 + "/k",
    "s3://[bucket/key.tif",  # urllib raises ValueError on an unclosed IPv6 bracket
    "file://[::1/x.tif",
    "https://[::1/repo.git",
    "https://example.invalid:99999/repo.git",
    "hf://org/name@rev",
    "hf://[org/name@rev",
    "hf://../../x",
    "https://example.invalid/repo.git#main",
    "git@example.invalid:repo.git",
    "ssh://127.0.0.1:1/x.git",
    "127.0.0.1:1",
    "[::1]:0",
    "localhost:99999",
    "EPSG:4326",
    "EPSG:999999",
    "+proj=longlat +datum=WGS84",
    "FP32",
    "BYTES",
    "NaN",
    "-1",
    "1e999",
    "🛰️🌊水",
    "\u202eevil",
    "\ufeff",
    "%2e%2e%2f",
    "${HOME}",
    "'; DROP TABLE datasets; --",
    'name = "a"',
    'name = "a" AND sensor = "b" AND tag = "c" AND band = "d"',
    'name = "a' + "\\" * 200,
    'name = "a"' + " " * 3000 + "AND",
    "AND AND AND",
    "ds_00000000000000000000000000",
    "hm_",
    "hm_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    "run_" + "9" * 124,
    "A" * 129,  # an id one over mesh.limits.MAX_ID_CHARS
    "x" * 4097,  # a filter over mesh.filters.MAX_FILTER_CHARS
    "x" * 16_385,  # any string over mesh.limits.MAX_TEXT_CHARS
    "é" * 35_000,  # 70 KB: would overflow trailers if echoed
]
SHORT_NASTY_STRINGS = [s for s in NASTY_STRINGS if len(s) <= 64]
FILTER_WORDS = [
    "name", "sensor", "tag", "band", "task", "state", "version", "pipeline_id", "healthy", "segmentation",
    "=", "!=", "==", "~", ":", "AND", "and", "OR", "NOT", "(", ")", '"', "'", "\\", '"x"', '"sentinel-2"',
    '"run_1"', " ", "  ", "\t", "\n", "*", "%", "_",
]  # fmt: skip
INT_BOUNDS = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


# URI-like strings, put together from parts: schemes, authorities (some that urllib refuses) and paths.
URI_SCHEMES = ["file://", "s3://", "https://", "http://", "ssh://", "git://", "hf://", "gs://", "", "/", "//"]
URI_AUTHORITIES = [
    "",
    "localhost",
    "bucket",
    "Bad_Bucket",
    "[::1]",
    "[::1",
    "[",
    "]",
    "user:pw@host:99999",
    "h:0",
    "a\x00b",
]
URI_PATHS = [
    "", "/", "/x.tif", "/../../etc/passwd", "/./a//b/", f"{TEMP}/fuzz.tif", f"{TEMP}/../etc", "/a\x00b", "/%00",
    "/%2e%2e/x", "/org/name@rev", "/org/name@", "/repo.git#main", "?q=1", "#frag", "/" + "d/" * 100, "/🛰️.tif",
]  # fmt: skip


def uri_text() -> st.SearchStrategy[str]:
    parts = (st.sampled_from(URI_SCHEMES), st.sampled_from(URI_AUTHORITIES), st.sampled_from(URI_PATHS))
    return st.builds(lambda scheme, authority, path: scheme + authority + path, *parts)


def crs_text() -> st.SearchStrategy[str]:
    code = st.one_of(
        st.sampled_from(["4326", "3857", "999999", "0", "-1", "43I6", "\x00326", "", "4326.5"]), st.text(max_size=6)
    )
    return st.one_of(
        st.builds(lambda prefix, c: prefix + c, st.sampled_from(["EPSG:", "epsg:", "ESRI:", "+init=epsg:"]), code),
        st.sampled_from(["+proj=longlat", "+proj=utm +zone=99", "GEOGCS[", "urn:ogc:def:crs:EPSG::4326", "{}"]),
    )


def prompt_text() -> st.SearchStrategy[str]:
    """Prompts with numbers, units and places: what the agent's patterns read."""
    words = [
        "water",
        "flood",
        "near",
        "Olinda",
        "within",
        "resolution",
        "m",
        "km",
        "10",
        "0.5",
        "1e9",
        "-3",
        "%",
        "sentinel-2",
        "landsat",
        "ndvi",
        "bands",
        "green",
        "nir",
        "at least",
        "under",
        "ms",
        ",",
        ".",
        "  ",
    ]
    return st.one_of(
        st.lists(st.sampled_from(words), max_size=30).map(" ".join), st.text(alphabet="0123456789 .,-", max_size=300)
    )


# Fields whose strings get text shaped for them besides any text, by field name.
SHAPED_TEXT = {
    "filter": lambda: st.lists(st.sampled_from(FILTER_WORDS), max_size=16).map("".join),
    "crs": crs_text,
    "prompt": prompt_text,
    **dict.fromkeys(
        ["uri", "source", "local_path", "repo_url", "hugging_face_id", "image", "repository", "endpoints"],
        lambda: uri_text(),
    ),
}


def text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY_STRINGS),
        uri_text(),
        st.text(max_size=24),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./:", max_size=40),
        st.builds(lambda ch, n: ch * n, st.characters(), st.sampled_from((129, 4097, 16_385))),
    )


def integers(lower: int, upper: int) -> st.SearchStrategy[int]:
    edges = sorted({n for n in (lower, upper, -1, 0, 1, 2, 1000, 1001, upper // 2) if lower <= n <= upper}, key=abs)
    return st.one_of(st.sampled_from(edges), st.integers(max(lower, -300), min(upper, 300)), st.integers(lower, upper))


@functools.cache
def scalar(field: FieldDescriptor, small: bool) -> st.SearchStrategy:
    cpp = field.cpp_type
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=8 if small else 64)
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if small:
            return st.one_of(st.sampled_from(SHORT_NASTY_STRINGS), uri_text(), st.text(max_size=8))
        shaped = SHAPED_TEXT.get(field.name)
        return st.one_of(shaped(), text()) if shaped else text()
    if cpp in INT_BOUNDS:
        return integers(*INT_BOUNDS[cpp])
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        assert field.enum_type is not None
        defined = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(defined), integers(*INT_BOUNDS[FieldDescriptor.CPPTYPE_INT32]))
    if cpp == FieldDescriptor.CPPTYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if cpp == FieldDescriptor.CPPTYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    raise AssertionError(f"no strategy for {field.full_name}")


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return field.is_repeated and entry is not None and entry.GetOptions().map_entry


@functools.cache
def single_value(field: FieldDescriptor, depth: int, small: bool) -> st.SearchStrategy:
    if field.message_type is not None:
        return messages(field.message_type, depth + 1, small)
    return scalar(field, small)


@functools.cache
def field_value(field: FieldDescriptor, depth: int, small: bool) -> st.SearchStrategy:
    """What `field` of a message at `depth` may be set to: a value, a list or a dict. A long list (over the mesh's
    limits) repeats one small value (short strings, short lists), so a request stays within a few MB."""
    if _is_map(field):
        assert field.message_type is not None
        key = single_value(field.message_type.fields_by_name["key"], depth, True)
        value = single_value(field.message_type.fields_by_name["value"], depth, small)
        return st.dictionaries(key, value, max_size=2 if small else 4)
    if field.is_repeated:
        short = st.lists(single_value(field, depth, small), max_size=2 if small else 4)
        if small:
            return short
        one = single_value(field, depth, True)
        long = st.tuples(one, st.sampled_from(LONG_LENGTHS)).map(lambda pair: [pair[0]] * pair[1])
        return st.one_of(short, long)
    return single_value(field, depth, small)


def set_field(message: Message, field: FieldDescriptor, value: object) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        assert field.message_type is not None
        for key, item in value.items():  # type: ignore[attr-defined]
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


@functools.cache
def messages(descriptor: Descriptor, depth: int = 0, small: bool = False) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with any subset of fields set (oneofs: the last one set wins)."""
    cls = message_factory.GetMessageClass(descriptor)
    fields = list(descriptor.fields)
    if depth > MAX_DEPTH or not fields:
        return st.builds(cls)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in draw(st.lists(st.sampled_from(fields), unique_by=lambda f: f.number, max_size=len(fields))):
            set_field(message, field, draw(field_value(field, depth, small)))
        return message

    return build()


def nested(message: Message, field: FieldDescriptor) -> list[Message]:
    """The messages `field` of `message` holds: its value if set, its entries, or its map's message values."""
    if field.message_type is None:
        return []
    if _is_map(field):
        value = field.message_type.fields_by_name["value"]
        return list(getattr(message, field.name).values()) if value.message_type is not None else []
    if field.is_repeated:
        return list(getattr(message, field.name))
    return [getattr(message, field.name)] if message.HasField(field.name) else []


def mutated(valid: Message) -> st.SearchStrategy[Message]:
    """`valid` with some of its fields, at any depth, replaced by random values, cleared or repeated."""

    def mutate(draw: st.DrawFn, message: Message, depth: int) -> None:
        for field in message.DESCRIPTOR.fields:
            action = draw(st.integers(0, 15))  # shrinks towards 0: leave the field as it is
            if action < 12:
                for item in nested(message, field)[:8]:
                    mutate(draw, item, depth + 1)
            elif action < 14:  # a random value; a small one (within the mesh's limits) half the time
                message.ClearField(field.name)
                set_field(message, field, draw(field_value(field, depth, draw(st.booleans()))))
            elif action == 14:
                message.ClearField(field.name)
            elif field.is_repeated and not _is_map(field) and len(getattr(message, field.name)):
                items = list(getattr(message, field.name))
                count = draw(st.sampled_from(LONG_LENGTHS))
                getattr(message, field.name).extend(items[:1] * count)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = type(valid)()
        message.CopyFrom(valid)
        mutate(draw, message, 0)
        return message

    return build()


def garbage(valid_bodies: list[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, and valid encodings with a byte flipped, inserted or the end cut off."""

    def flip(body: bytes, at: int, byte: int) -> bytes:
        at %= max(len(body), 1)
        return body[:at] + bytes([byte]) + body[at + 1 :]

    def insert(body: bytes, at: int, chunk: bytes) -> bytes:
        at %= len(body) + 1
        return body[:at] + chunk + body[at:]

    def cut(body: bytes, at: int) -> bytes:
        return body[: at % max(len(body), 1)]

    body = st.sampled_from(valid_bodies)
    position = st.integers(0, 1 << 16)
    return st.one_of(
        st.binary(min_size=1, max_size=512),
        st.builds(flip, body, position, st.integers(0, 255)),
        st.builds(insert, body, position, st.binary(min_size=1, max_size=16)),
        st.builds(cut, body, position),
        st.sampled_from([b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\x80" * 10, b"\x12\x01"]),
    )


# --------------------------------------------------------------------------- the mesh


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def mesh_pids(state: dict) -> dict[str, int]:
    """Every process of the mesh by name: the services, the gateway's supervisor and its Envoy."""
    pids = {name: entry["pid"] for name, entry in state["processes"].items()}
    supervisor = pids["gateway"]
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    envoys = [int(child) for child in children if "envoy" in Path(f"/proc/{child}/cmdline").read_text()]
    assert len(envoys) == 1, children
    pids["envoy"] = envoys[0]
    return pids


@dataclass
class FuzzMesh:
    state: dict
    pids: dict[str, int]
    channel: grpc.Channel
    valid: dict[str, Message]  # a valid request for each method of MUTATED, by str(Method)
    codes: Counter
    started: float
    callables: dict[str, Callable] = dataclasses.field(default_factory=dict)

    def dead(self) -> list[str]:
        return [name for name, pid in self.pids.items() if not running(pid)]

    def callable_for(self, method: Method) -> Callable:
        if method.path not in self.callables:
            kind = self.channel.unary_stream if method.streaming else self.channel.unary_unary
            self.callables[method.path] = kind(
                method.path, request_serializer=None, response_deserializer=method.response_class.FromString
            )
        return self.callables[method.path]

    def call(self, method: Method, body: bytes) -> tuple[grpc.StatusCode, str]:
        rpc = self.callable_for(method)
        metadata = SERVICE_METADATA if required_role(method.path) == SERVICE_ROLE else METADATA
        try:
            if method.streaming:
                for _ in rpc(body, timeout=STREAM_DEADLINE_S, metadata=metadata):
                    pass
            else:
                rpc(body, timeout=UNARY_DEADLINE_S, metadata=metadata)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        self.codes[code] += 1
        return code, details

    def check(self, method: Method, body: bytes, shown: object) -> None:
        code, details = self.call(method, body)
        bad = (
            code in FORBIDDEN
            or (code == grpc.StatusCode.DEADLINE_EXCEEDED and not method.streaming)
            # grpc's own refusal of trailers over the 8 KiB a client accepts: the service's answer was lost
            or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata size" in details)
        )
        assert not bad, f"{method} answered {code.name} ({details[:300]!r}) to {str(shown)[:600]!r}"


def seed_catalog(channel: grpc.Channel, model_root: Path) -> dict[str, Message]:
    """A dataset, a model and a pipeline that refer to nothing real, a run of it (which fails), and a valid
    request for each method the mutated examples start from."""

    def call(method: str, request: Message) -> Message:
        rpc = channel.unary_unary(
            BY_NAME[method].path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=BY_NAME[method].response_class.FromString,
        )
        return rpc(request, timeout=30, metadata=METADATA)

    missing_scene = f"file://{model_root.parent}/no-such-scene.tif"
    dataset = core_pb2.Dataset(
        name="fuzz-scene", uri=missing_scene, sensor="landsat-7", bands=LANDSAT_BANDS, resolution_m=28.5,
        bbox=c.BoundingBox(min_x=-35.0, min_y=-8.1, max_x=-34.8, max_y=-7.9), tags=["water"],
    )  # fmt: skip
    dataset_id = call("core.v1.CoreService/CreateDataset", core_pb2.CreateDatasetRequest(dataset=dataset)).id
    model = ndwi_model(source=str(model_root / "no-such-model"))
    model_id = call("core.v1.CoreService/RegisterModel", core_pb2.RegisterModelRequest(model=model)).id
    export = f"file://{model_root.parent}/outputs"
    spec = water_spec(dataset_id, model_id, export)
    pipeline = core_pb2.Pipeline(name="fuzz-water", description="fuzzing", spec=spec)
    pipeline_id = call("core.v1.CoreService/CreatePipeline", core_pb2.CreatePipelineRequest(pipeline=pipeline)).id
    run_id = call("core.v1.CoreService/RunPipeline", core_pb2.RunPipelineRequest(pipeline_id=pipeline_id)).id
    index_spec = c.PipelineSpec(
        blocks=[
            c.Block(id="scene", dataset=c.DatasetBlock(dataset_id=dataset_id)),
            c.Block(id="ndwi", index=c.IndexBlock(preset=c.SPECTRAL_INDEX_NDWI)),
            c.Block(id="polygons", vectorize=c.VectorizeBlock(threshold=0.0, crs="EPSG:4326")),
            c.Block(id="out", export=c.ExportBlock(uri=export, formats=[c.EXPORT_FORMAT_GEOJSON])),
        ],
        edges=[
            c.Edge(source_block_id="scene", target_block_id="ndwi"),
            c.Edge(source_block_id="ndwi", target_block_id="polygons"),
            c.Edge(source_block_id="polygons", target_block_id="out"),
        ],
    )
    constraints = agent_pb2.Constraints(
        sensors=["landsat-7"], bands=["green", "nir"], task=c.MODEL_TASK_SEGMENTATION,
        region=c.BoundingBox(min_x=-35.0, min_y=-8.0, max_x=-34.9, max_y=-7.95), max_resolution_m=30,
    )  # fmt: skip
    prompt = "map surface water around Olinda from Landsat 7"
    user = identity_pb2.User(name="fuzz-user", role=identity_pb2.ROLE_EDITOR)
    user_id = call("core.v1.IdentityService/CreateUser", identity_pb2.CreateUserRequest(user=user)).id
    audit_time = Timestamp(seconds=int(time.time()) - 60)
    launch = orchestrator_pb2.LaunchRunRequest(
        spec=index_spec,
        datasets={dataset_id: orchestrator_pb2.ResolvedDataset(uri=missing_scene, bands=LANDSAT_BANDS)},
        models={
            model_id: orchestrator_pb2.ResolvedModel(
                model_name="ndwi-water", model_version="1.0.0", endpoints=["127.0.0.1:1"],
                input=model.input, outputs=model.outputs,
            )
        },
    )  # fmt: skip
    return {
        "core.v1.IdentityService/CreateUser": identity_pb2.CreateUserRequest(
            user=identity_pb2.User(name="fuzz-other", role=identity_pb2.ROLE_VIEWER)
        ),
        "core.v1.IdentityService/UpdateUser": identity_pb2.UpdateUserRequest(
            user=identity_pb2.User(id=user_id, role=identity_pb2.ROLE_VIEWER)
        ),
        "core.v1.IdentityService/CreateApiKey": identity_pb2.CreateApiKeyRequest(
            user_id=user_id, ttl_seconds=3600, description="fuzz"
        ),
        "core.v1.CoreService/CreateDataset": core_pb2.CreateDatasetRequest(
            dataset=core_pb2.Dataset(name="fuzz-other", uri=missing_scene, bands=["red", "nir"], tags=["t"])
        ),
        "core.v1.CoreService/ImportStacDatasets": core_pb2.ImportStacDatasetsRequest(
            item_json=json.dumps(
                {
                    "type": "Feature",
                    "stac_version": "1.1.0",
                    "id": "fuzz-item",
                    "bbox": [-35, -8.1, -34.8, -7.9],
                    "geometry": None,
                    "links": [],
                    "properties": {"datetime": "2024-06-19T12:30:00Z", "eo:cloud_cover": 5, "proj:code": "EPSG:31985"},
                    "assets": {
                        "B4": {"href": missing_scene, "type": "image/tiff", "eo:bands": [{"common_name": "nir"}]}
                    },
                }
            ),
            name="fuzz-stac",
        ),
        "core.v1.CoreService/GetDataset": core_pb2.GetDatasetRequest(id=dataset_id),
        "core.v1.CoreService/ListDatasets": core_pb2.ListDatasetsRequest(
            page_size=10, filter='sensor = "landsat-7" AND tag = "water" AND band = "nir"'
        ),
        "core.v1.CoreService/UpdateDataset": core_pb2.UpdateDatasetRequest(
            dataset=core_pb2.Dataset(id=dataset_id, description="updated", tags=["water", "coast"])
        ),
        "core.v1.CoreService/RegisterModel": core_pb2.RegisterModelRequest(
            model=ndwi_model(name="fuzz-model", source=str(model_root / "broken"))
        ),
        "core.v1.CoreService/ListModels": core_pb2.ListModelsRequest(filter='task = "segmentation" AND band = "nir"'),
        "core.v1.CoreService/ImportModelFromStac": core_pb2.ImportModelFromStacRequest(
            item_json=json.dumps(mlm.model_item(ndwi_model(name="fuzz-stac", source=str(model_root / "broken"))))
        ),
        "core.v1.CoreService/CreatePipeline": core_pb2.CreatePipelineRequest(
            pipeline=core_pb2.Pipeline(name="fuzz-index", spec=index_spec)
        ),
        "core.v1.CoreService/ValidatePipeline": core_pb2.ValidatePipelineRequest(spec=spec),
        "core.v1.CoreService/ListPipelines": core_pb2.ListPipelinesRequest(filter='name = "fuzz-water"'),
        "core.v1.CoreService/RunPipeline": core_pb2.RunPipelineRequest(pipeline_id=pipeline_id),
        "core.v1.CoreService/GetRun": core_pb2.GetRunRequest(id=run_id),
        "core.v1.CoreService/ListRuns": core_pb2.ListRunsRequest(filter=f'pipeline_id = "{pipeline_id}"'),
        "core.v1.CoreService/WatchRun": core_pb2.WatchRunRequest(run_id=run_id, after_sequence=1),
        "core.v1.CoreService/CancelRun": core_pb2.CancelRunRequest(id=run_id),
        "core.v1.AuditService/ListAuditEvents": audit_pb2.ListAuditEventsRequest(
            page_size=10, filter='method = "CreateDataset" AND outcome = "OK"', start_time=audit_time
        ),
        "core.v1.AuditService/RecordAuditEvents": audit_pb2.RecordAuditEventsRequest(
            events=[
                audit_pb2.AuditEvent(
                    time=audit_time,
                    service="hosting",
                    method="DeployModel",
                    target_id="hm_0",
                    subject="key:fuzz",
                    role="admin",
                    request_id="fuzz-1",
                    outcome="NOT_FOUND",
                    peer="ipv4:127.0.0.1:1",
                )
            ]
        ),  # fmt: skip
        "hosting.v1.HostingService/PackageModel": hosting_pb2.PackageModelRequest(
            model_name="fuzz-model",
            model_version="1.0.0",
            local_path=str(model_root / "broken"),
            model_card=model.card,
        ),  # fmt: skip
        "hosting.v1.HostingService/DeployModel": hosting_pb2.DeployModelRequest(
            model_id="hm_0", environment="staging", replicas=1, runtime=hosting_pb2.RUNTIME_LOCAL
        ),
        "hosting.v1.HostingService/ListModels": hosting_pb2.ListModelsRequest(filter='state = "healthy"'),
        "hosting.v1.HostingService/PullImage": hosting_pb2.PullImageRequest(image="127.0.0.1:1/fuzz/model:1.0.0"),
        "orchestrator.v1.OrchestratorService/LaunchRun": launch,
        "agent.v1.AgentService/Recommend": agent_pb2.RecommendRequest(
            prompt=prompt, constraints=constraints, max_results=3, planner=agent_pb2.PLANNER_OFFLINE
        ),
        "agent.v1.AgentService/PlanPipeline": agent_pb2.PlanPipelineRequest(
            prompt=prompt, constraints=constraints, dataset_id=dataset_id, planner=agent_pb2.PLANNER_OFFLINE
        ),
        "grpc.health.v1.Health/Check": health_pb2.HealthCheckRequest(service="constellation.core.v1.CoreService"),
    }


@pytest.fixture(scope="module")
def fuzz_mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-mesh")
    model_root = home / MODEL_ROOT_NAME
    (model_root / "empty").mkdir(parents=True)
    (model_root / "broken").mkdir()
    (model_root / "broken" / "constellation.yaml").write_text("name: [unclosed\ninput: {bands: 7}\n")
    NASTY_STRINGS.extend(str(model_root / name) for name in ("", "empty", "broken", "no-such-model"))
    env = {
        **mesh_env(home),
        "CONSTELLATION_API_KEYS": f"{ADMIN_KEY}:admin",
        "CONSTELLATION_SERVICE_KEY": SERVICE_KEY,
        "CONSTELLATION_HOSTING_MODEL_ROOTS": str(model_root),
        "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_ADDRESS": "0",
        "CONSTELLATION_GATEWAY_RATE_LIMIT_PER_KEY": "0",
    }
    started = time.monotonic()
    state = mesh_process.up(env)
    channel = grpc.insecure_channel(state["processes"]["gateway"]["address"], options=channel_options())
    try:
        valid = seed_catalog(channel, model_root)
        assert set(valid) == {str(method) for method in MUTATED}
        yield FuzzMesh(state, mesh_pids(state), channel, valid, Counter(), started)
    finally:
        channel.close()
        mesh_process.down(env)


def assert_mesh_alive(mesh: FuzzMesh, method: Method) -> None:
    """After fuzzing `method`: every process of the mesh still runs."""
    assert not mesh.dead(), f"after fuzzing {method}, these mesh processes are gone: {mesh.dead()}"


# --------------------------------------------------------------------------- the properties


def examples(method: Method, count: int) -> int:
    return min(count, STREAM_EXAMPLES) if method.streaming else count


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_random_requests_get_a_deliberate_answer(fuzz_mesh, method):
    @settings(SETTINGS, max_examples=examples(method, RANDOM_EXAMPLES))
    @given(request=messages(method.request))
    def fuzz(request: Message) -> None:
        fuzz_mesh.check(method, request.SerializeToString(), request)

    fuzz()
    assert_mesh_alive(fuzz_mesh, method)


# The methods whose mutated examples start from a valid request (seed_catalog writes them).
MUTATED = [
    BY_NAME[name]
    for name in (
        "core.v1.IdentityService/CreateUser", "core.v1.IdentityService/UpdateUser",
        "core.v1.IdentityService/CreateApiKey",
        "core.v1.CoreService/CreateDataset", "core.v1.CoreService/GetDataset", "core.v1.CoreService/ListDatasets",
        "core.v1.CoreService/ImportStacDatasets",
        "core.v1.CoreService/UpdateDataset", "core.v1.CoreService/RegisterModel", "core.v1.CoreService/ListModels",
        "core.v1.CoreService/ImportModelFromStac",
        "core.v1.CoreService/CreatePipeline", "core.v1.CoreService/ValidatePipeline",
        "core.v1.CoreService/ListPipelines", "core.v1.CoreService/RunPipeline", "core.v1.CoreService/GetRun",
        "core.v1.CoreService/ListRuns", "core.v1.CoreService/WatchRun", "core.v1.CoreService/CancelRun",
        "core.v1.AuditService/ListAuditEvents", "core.v1.AuditService/RecordAuditEvents",
        "hosting.v1.HostingService/PackageModel", "hosting.v1.HostingService/DeployModel",
        "hosting.v1.HostingService/ListModels", "hosting.v1.HostingService/PullImage",
        "orchestrator.v1.OrchestratorService/LaunchRun", "agent.v1.AgentService/Recommend",
        "agent.v1.AgentService/PlanPipeline", "grpc.health.v1.Health/Check",
    )
]  # fmt: skip


@pytest.mark.parametrize("method", MUTATED, ids=str)
def test_mutated_valid_requests_get_a_deliberate_answer(fuzz_mesh, method):
    valid = fuzz_mesh.valid[str(method)]
    code, details = fuzz_mesh.call(method, valid.SerializeToString())
    assert code not in FORBIDDEN, f"{method} answered {code.name} ({details!r}) to its valid example"

    @settings(SETTINGS, max_examples=examples(method, MUTATED_EXAMPLES))
    @given(request=mutated(valid))
    def fuzz(request: Message) -> None:
        fuzz_mesh.check(method, request.SerializeToString(), request)

    fuzz()
    assert_mesh_alive(fuzz_mesh, method)


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_garbage_bodies_get_a_deliberate_answer(fuzz_mesh, method):
    valid = fuzz_mesh.valid.get(str(method))
    bodies = [valid.SerializeToString()] if valid is not None else []
    bodies.append(method.request_class().SerializeToString() + b"\x0a\x03abc")  # field 1 as a 3-byte string

    @settings(SETTINGS, max_examples=examples(method, GARBAGE_EXAMPLES))
    @given(body=garbage(bodies))
    def fuzz(body: bytes) -> None:
        fuzz_mesh.check(method, body, body)

    fuzz()
    assert_mesh_alive(fuzz_mesh, method)


def health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), metadata=METADATA, timeout=10
        )
    return reply.status


def test_every_service_still_serves_after_the_fuzzing(fuzz_mesh):
    serving = health_pb2.HealthCheckResponse.SERVING
    processes = fuzz_mesh.state["processes"]
    assert health(processes["gateway"]["address"], "") == serving
    for service, (full_name, _) in SERVICES.items():
        for name in ("", full_name):
            address = processes[SERVED_BY.get(service, service)]["address"]
            assert health(address, name) == serving, f"{service} {name!r}"
    assert not fuzz_mesh.dead(), f"mesh processes gone after the fuzzing: {fuzz_mesh.dead()}"
    # Nothing real ran: every run the fuzzing started names a model whose source does not exist, or no scene.
    list_runs = fuzz_mesh.callable_for(BY_NAME["core.v1.CoreService/ListRuns"])
    runs = list_runs(core_pb2.ListRunsRequest(page_size=1000).SerializeToString(), timeout=10, metadata=METADATA).runs
    assert runs and not [run.id for run in runs if run.state == c.RUN_STATE_SUCCEEDED]
    calls = sum(fuzz_mesh.codes.values())
    codes = ", ".join(f"{code.name} {n}" for code, n in fuzz_mesh.codes.most_common())
    MEASURED_FIGURES.append(
        f"fuzzing through the gateway: {calls} calls over {len(METHODS)} methods in "
        f"{time.monotonic() - fuzz_mesh.started:.0f} s with the mesh's start ({codes})"
    )


def test_every_method_is_fuzzed():
    """The descriptors give every method of the mesh: none is left out silently."""
    names = {str(method) for method in METHODS}
    assert len(names) == len(METHODS)
    for service, (full_name, _) in SERVICES.items():
        count = len(descriptor_pool.Default().FindServiceByName(full_name).methods)
        assert count == sum(m.path.startswith(f"/{full_name}/") for m in METHODS) > 0, service
    assert {"grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"} <= names
