"""List filters as the mesh's List RPCs take them: `field = "value"` terms joined by AND.

    name = "ndwi-water" AND state = "healthy"

Values are double-quoted (`\\"` inside one is a quote). Each service names the
fields it filters on; an unknown field or an unreadable term is
INVALID_ARGUMENT on the `filter` field, naming what is allowed.

The text is read in one pass, character by character, with no regular
expression that could backtrack: a filter is caller input, and a reader must
not be able to make a List call slow by writing an odd one. It is also at most
MAX_FILTER_CHARS long.
"""

from __future__ import annotations

from collections.abc import Collection

from mesh.errors import InvalidArgument, shorten

MAX_FILTER_CHARS = 4096
_FIELD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_")
_WORD_ENDS = frozenset('="')


def parse_filter(text: str, fields: Collection[str]) -> dict[str, str]:
    """field -> wanted value, for each term of `text` (empty: no filter). A field named twice keeps the last."""
    return dict(filter_terms(text, fields))


def filter_terms(text: str, fields: Collection[str]) -> list[tuple[str, str]]:
    """(field, wanted value) for each term of `text`, in order (empty: no filter)."""
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument.field("filter", f"is {len(text)} characters; at most {MAX_FILTER_CHARS}")
    reader = _Reader(text)
    terms: list[tuple[str, str]] = []
    reader.skip_space()
    if reader.at_end():
        return terms
    while True:
        start = reader.pos
        term = reader.term()
        if term is None:
            unread = reader.term_text(start)
            what = f"cannot read {shorten(unread)!r}" if unread else "nothing follows the last AND"
            raise InvalidArgument.field("filter", f'{what}: write terms as field = "value", joined by AND')
        name, value = term
        if name not in fields:
            raise InvalidArgument.field(
                "filter", f"cannot filter on {shorten(name)!r}; filterable fields: {', '.join(fields)}"
            )
        terms.append((name, value))
        if reader.at_end():
            return terms
        reader.and_keyword()  # term() stops only at the end or before " AND "


class _Reader:
    """A cursor over the filter text; every method moves forward only, so reading is linear in its length."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def word(self) -> str:
        """The run of characters up to the next space, '=' or '"'."""
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace() and self.text[self.pos] not in _WORD_ENDS:
            self.pos += 1
        return self.text[start : self.pos]

    def term(self) -> tuple[str, str] | None:
        """`field = "value"`, then either the end or whitespace and AND and whitespace (left unread); None if not."""
        self.skip_space()
        name = self.word()
        if not name or not set(name) <= _FIELD_CHARS:
            return None
        self.skip_space()
        if self.at_end() or self.text[self.pos] != "=":
            return None
        self.pos += 1
        self.skip_space()
        value = self.quoted()
        if value is None:
            return None
        spaced = self.pos
        self.skip_space()
        if self.at_end():
            return name, value
        if self.pos == spaced or not self._at_and():
            return None
        self.pos = spaced
        return name, value

    def quoted(self) -> str | None:
        """A double-quoted value: `\\"` is a quote, any other backslash pair stays as written."""
        if self.at_end() or self.text[self.pos] != '"':
            return None
        self.pos += 1
        parts: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(parts)
            if char == "\\" and self.pos + 1 < len(self.text):
                following = self.text[self.pos + 1]
                parts.append('"' if following == '"' else char + following)
                self.pos += 2
                continue
            parts.append(char)
            self.pos += 1
        return None  # no closing quote

    def _at_and(self, pos: int | None = None) -> bool:
        """Whether AND (any case) followed by whitespace starts at `pos` (default: here)."""
        pos = self.pos if pos is None else pos
        end = pos + 3
        return self.text[pos:end].upper() == "AND" and end < len(self.text) and self.text[end].isspace()

    def and_keyword(self) -> None:
        self.skip_space()
        self.pos += 3
        self.skip_space()

    def term_text(self, start: int) -> str:
        """The text of the term that starts at `start`: up to the next whitespace-delimited AND, or the end."""
        pos, spaced = start, False
        while pos < len(self.text):
            if spaced and self._at_and(pos):
                return self.text[start:pos].strip()
            spaced = self.text[pos].isspace()
            pos += 1
        return self.text[start:].strip()
