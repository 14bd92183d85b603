"""List RPCs' filter and page token, one way for every resource core lists (datasets, models,
pipelines, runs).

A filter is `field = "value"` terms joined by AND (read by mesh.filters); each term becomes a SQL
clause. Pages are keyset pages over ids, which sort by creation time (mesh.ids); a page token is opaque
to clients and bound to the filter it was issued for, so a token reused with another filter is refused
instead of silently skipping rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import TypeVar

from sqlalchemy import ColumnElement, Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from mesh.errors import InvalidArgument
from mesh.filters import filter_terms

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

RowT = TypeVar("RowT")
# Filterable field -> the SQL clause for one value of it.
FilterFields = Mapping[str, Callable[[str], ColumnElement[bool]]]


def parse_filter(text: str, fields: FilterFields) -> list[ColumnElement[bool]]:
    """`field = "value" AND ...` into SQL clauses, one per term: a field named twice must match both values
    (`tag = "water" AND tag = "s2"`). Terms are read by mesh.filters, as every List RPC of the mesh reads them."""
    return [fields[name](value) for name, value in filter_terms(text, fields)]


class Page:
    """Keyset paging over time-ordered ids. Tokens are bound to the filter they were issued for."""

    def __init__(self, page_size: int, page_token: str, filter_text: str) -> None:
        if page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        self.size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        self.filter_hash = hashlib.sha256(filter_text.strip().encode()).hexdigest()[:16]
        self.after = ""
        if page_token:
            try:
                token = json.loads(base64.urlsafe_b64decode(page_token.encode()))
                self.after, token_filter = str(token["after"]), str(token["filter"])
            except (ValueError, KeyError, TypeError):
                raise InvalidArgument.field(
                    "page_token", "is not a token this server issued; pass next_page_token unchanged"
                ) from None
            if token_filter != self.filter_hash:
                raise InvalidArgument.field(
                    "page_token", "was issued for a different filter; start again without a token"
                )

    def fetch(
        self,
        session: Session,
        statement: Select[RowT],
        id_column: InstrumentedAttribute[str],
        newest_first: bool = False,
    ) -> tuple[list[RowT], str]:
        """This page of `statement`'s rows in `id_column` order (descending when `newest_first`), and the next
        page's token ("" after the last)."""
        if self.after:
            statement = statement.where(id_column < self.after if newest_first else id_column > self.after)
        order = id_column.desc() if newest_first else id_column
        rows = list(session.scalars(statement.order_by(order).limit(self.size + 1)))
        if len(rows) <= self.size:
            return rows, ""
        rows = rows[: self.size]
        token = json.dumps({"after": getattr(rows[-1], id_column.key), "filter": self.filter_hash})
        return rows, base64.urlsafe_b64encode(token.encode()).decode()
