"""Bounds every request of the mesh is held to before a servicer sees it.

The interceptor runs `check_request` on each incoming message: a walk over
the fields that are set, driven by the message's descriptor, so every RPC of
every service (and every one added later) is covered without code of its own.
It refuses, with INVALID_ARGUMENT naming the field path:

- strings longer than their limit: ids (`id`, `*_id`) MAX_ID_CHARS, `filter`
  MAX_FILTER_CHARS, any other MAX_TEXT_CHARS;
- repeated and map fields with more entries than REPEATED_LIMITS gives their
  name (blocks, edges, tags, bands), or MAX_REPEATED;
- enum numbers the enum does not define (proto3 keeps unknown numbers, and
  they would otherwise reach domain code that cannot name them).

A repeated field over its count is reported without being walked, so a
request's cost here stays proportional to what the limits allow. Services keep
their own, tighter domain checks (a dataset name, a prompt's length); these
bounds only make sure nothing unbounded gets that far. Where the servers'
`max_receive_message_length` caps a request's bytes, this caps its shape.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mesh.errors import FieldViolation
from mesh.filters import MAX_FILTER_CHARS

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 16_384
MAX_REPEATED = 1024
REPEATED_LIMITS = {"blocks": 256, "edges": 1024, "tags": 64, "bands": 64}
MAX_VIOLATIONS = 20  # reported per request; the rest are summed up in the message

_STRING = FieldDescriptor.TYPE_STRING
_ENUM = FieldDescriptor.TYPE_ENUM
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def string_limit(field: FieldDescriptor) -> int:
    if field.name == "id" or field.name.endswith(("_id", "_ids")):
        return MAX_ID_CHARS
    if field.name == "filter":
        return MAX_FILTER_CHARS
    return MAX_TEXT_CHARS


def check_request(message: Message) -> list[FieldViolation]:
    """Every bound `message` breaks (at most MAX_VIOLATIONS of them), with field paths from the request."""
    found: list[FieldViolation] = []
    _walk(message, "", found)
    return found


def _walk(message: Message, prefix: str, found: list[FieldViolation]) -> None:
    for field, value in message.ListFields():
        if len(found) >= MAX_VIOLATIONS:
            return
        path = f"{prefix}{field.name}"
        if _is_map(field):
            _check_map(field, value, path, found)
        elif field.is_repeated:
            limit = REPEATED_LIMITS.get(field.name, MAX_REPEATED)
            if len(value) > limit:
                found.append(FieldViolation(path, f"has {len(value)} entries; at most {limit}"))
                continue
            for i, item in enumerate(value):
                _check_value(field, item, f"{path}[{i}]", found)
        else:
            _check_value(field, value, path, found)


def _check_value(field: FieldDescriptor, value: object, path: str, found: list[FieldViolation]) -> None:
    if field.type == _MESSAGE:
        assert isinstance(value, Message)
        _walk(value, f"{path}.", found)
    elif field.type == _STRING:
        assert isinstance(value, str)
        limit = string_limit(field)
        if len(value) > limit:
            found.append(FieldViolation(path, f"is {len(value)} characters; at most {limit}"))
    elif field.type == _ENUM:
        enum = field.enum_type
        assert isinstance(value, int) and enum is not None
        if value not in enum.values_by_number:
            names = ", ".join(v.name for v in enum.values if v.number != 0)
            found.append(FieldViolation(path, f"{value} is not a {enum.name} value; use one of {names}"))


def _is_map(field: FieldDescriptor) -> bool:
    entry: Descriptor | None = field.message_type
    return field.is_repeated and entry is not None and entry.GetOptions().map_entry


def _check_map(field: FieldDescriptor, value: object, path: str, found: list[FieldViolation]) -> None:
    entries = dict(value)  # type: ignore[call-overload]  # a protobuf map container
    limit = REPEATED_LIMITS.get(field.name, MAX_REPEATED)
    if len(entries) > limit:
        found.append(FieldViolation(path, f"has {len(entries)} entries; at most {limit}"))
        return
    assert field.message_type is not None  # a map field's entry message
    value_field = field.message_type.fields_by_name["value"]
    for key, item in entries.items():
        if isinstance(key, str) and len(key) > MAX_ID_CHARS:
            found.append(FieldViolation(path, f"has a key of {len(key)} characters; at most {MAX_ID_CHARS}"))
            continue
        _check_value(value_field, item, f"{path}[{key!r}]", found)
