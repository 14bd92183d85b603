"""List filters as the mesh's List RPCs take them: `field = "value"` terms joined by AND.

    name = "ndwi-water" AND state = "healthy"

Values are double-quoted (`\\"` inside one is a quote). Each service names the
fields it filters on; an unknown field or an unreadable term is
INVALID_ARGUMENT on the `filter` field, naming what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from mesh.errors import InvalidArgument

_TERM = re.compile(r'^\s*([a-z_]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*$')


def parse_filter(text: str, fields: Collection[str]) -> dict[str, str]:
    """field -> wanted value, for each term of `text` (empty: no filter). A field named twice keeps the last."""
    return dict(filter_terms(text, fields))


def filter_terms(text: str, fields: Collection[str]) -> list[tuple[str, str]]:
    """(field, wanted value) for each term of `text`, in order (empty: no filter)."""
    terms: list[tuple[str, str]] = []
    if not text.strip():
        return terms
    for term in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE):
        match = _TERM.match(term)
        if not match:
            raise InvalidArgument.field(
                "filter", f'cannot read {term.strip()!r}: write terms as field = "value", joined by AND'
            )
        name, value = match.group(1), match.group(2).replace('\\"', '"')
        if name not in fields:
            raise InvalidArgument.field("filter", f"cannot filter on {name!r}; filterable fields: {', '.join(fields)}")
        terms.append((name, value))
    return terms
