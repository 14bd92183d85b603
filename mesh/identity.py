"""Who is calling: the identity the interceptor authenticated, for the servicer to check ownership and roles.

Roles, weakest first: viewer (reads), editor (reads; creates and changes what it owns), admin (everything).
`service` is a mesh service calling a peer; it may act on behalf of a user (the user's identity then travels in
ON_BEHALF_HEADER, and is believed only from a caller that authenticated as a service).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

ROLES = ("viewer", "editor", "admin")
SERVICE_ROLE = "service"
# Older configurations name the read-only role "reader".
ROLE_ALIASES = {"reader": "viewer"}
ON_BEHALF_HEADER = "x-constellation-on-behalf-of"


def canonical_role(role: str) -> str:
    """`role` with aliases resolved; ValueError for a role that does not exist."""
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


@dataclass(frozen=True)
class Identity:
    subject: str  # a user id, "service:<name>", or "key:<fingerprint>" for a key from the settings
    role: str  # one of ROLES, or SERVICE_ROLE
    name: str = ""  # for people and logs: a user's name, a service's name

    def at_least(self, role: str) -> bool:
        """True when this identity holds `role` or a stronger one (a service holds every role)."""
        if self.role == SERVICE_ROLE:
            return True
        return ROLES.index(self.role) >= ROLES.index(canonical_role(role))

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", SERVICE_ROLE)


# Authentication off (an explicit setting): every caller acts as this admin.
ANONYMOUS_ADMIN = Identity("anonymous", "admin", "anonymous")
# A peer that presented the mesh's service key (every service shares one).
SERVICE_IDENTITY = Identity("service:mesh", SERVICE_ROLE, "mesh")


def on_behalf_value(who: Identity) -> str:
    """ON_BEHALF_HEADER's value for `who`: "role;subject;name" (user names and subjects hold no ';')."""
    return f"{who.role};{who.subject};{who.name}"


def from_on_behalf(value: str) -> Identity:
    """The user a service acts for, from ON_BEHALF_HEADER; ValueError when the value is not one on_behalf_value
    makes for a user (a service cannot claim to act for a service)."""
    role, _, rest = value.partition(";")
    subject, _, name = rest.partition(";")
    if not subject or len(value) > 512:
        raise ValueError(f"{ON_BEHALF_HEADER} must be 'role;subject;name'")
    return Identity(subject, canonical_role(role), name)


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("identity", default=None)


def current() -> Identity | None:
    """The identity of the call being served; None outside a call."""
    return _current.get()


def set_current(identity: Identity | None) -> contextvars.Token:
    return _current.set(identity)


def reset_current(token: contextvars.Token) -> None:
    _current.reset(token)
