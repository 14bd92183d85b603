"""Read a List RPC to its end: call it again with each `next_page_token` until one comes back empty.

Every List RPC of the mesh pages this way (AIP-158); callers that need the whole list (the agent's
catalog snapshot, a look-up by name on hosting) page through it here, not with a loop of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar


class ListResponse(Protocol):
    @property
    def next_page_token(self) -> str: ...


ResponseT = TypeVar("ResponseT", bound=ListResponse)


def pages(fetch: Callable[[str], ResponseT]) -> Iterator[ResponseT]:
    """Each response of a List RPC in turn; `fetch(page_token)` makes one call ("" for the first page)."""
    token = ""
    while True:
        page = fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return
