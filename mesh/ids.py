"""Resource ids: a prefix and a ULID (time-ordered, so ids sort by creation)."""

from __future__ import annotations

import os
import time
from datetime import datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str, at: datetime | None = None) -> str:
    """A new id made now, or at `at` (so that ids of records made elsewhere sort by their own time)."""
    millis = int((at.timestamp() if at is not None else time.time()) * 1000)
    value = (max(millis, 0) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
