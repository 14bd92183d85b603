"""Protobuf enum values <-> the lowercase names the domain uses.

A proto enum value is spelled `<ENUM_NAME_IN_SNAKE_CASE>_<VALUE>` (AIP-126), so the
prefix follows from the enum's own name: ModelTask.MODEL_TASK_SEGMENTATION is
"segmentation", DeploymentState.DEPLOYMENT_STATE_READY is "ready". The zero
value (`*_UNSPECIFIED`) is "".
"""

from __future__ import annotations

import re
from typing import Protocol, TypeVar, cast

from google.protobuf.descriptor import EnumDescriptor

_V = TypeVar("_V", bound=int)


class EnumType(Protocol[_V]):
    """What protobuf's generated enum wrappers offer (mypy-protobuf's _EnumTypeWrapper[X.ValueType])."""

    @property
    def DESCRIPTOR(self) -> EnumDescriptor: ...

    def Name(self, number: _V) -> str: ...

    def Value(self, name: str | bytes) -> _V: ...


def prefix_of(enum_type: EnumType[_V]) -> str:
    """ModelTask -> "MODEL_TASK_"."""
    name: str = enum_type.DESCRIPTOR.name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_"


def short_name(full_name: str, prefix: str) -> str:
    """ "NORMALIZATION_MIN_MAX" -> "min_max" for prefix "NORMALIZATION_"; the *_UNSPECIFIED value and "" -> ""."""
    if not full_name:
        return ""
    short = full_name.removeprefix(prefix).lower()
    return "" if short == "unspecified" else short


def enum_name(enum_type: EnumType[_V], value: _V) -> str:
    """The lowercase name of `value`: common_pb2.ModelTask, 2 -> "segmentation"; 0 -> ""."""
    return short_name(enum_type.Name(value), prefix_of(enum_type)) if value else ""


def enum_value(enum_type: EnumType[_V], name: str) -> _V:
    """The number of lowercase `name`: common_pb2.ModelTask, "segmentation" -> 2; "" -> 0. Raises ValueError."""
    return enum_type.Value(prefix_of(enum_type) + name.upper()) if name else cast(_V, 0)  # 0: every enum's UNSPECIFIED
