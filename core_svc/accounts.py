"""Users and their API keys, in core's database.

A key's text is "cst_<key id>_<secret>": the key id (16 hex digits) is public and finds the row, the secret
(64 hex digits, 256 random bits) is shown once, at creation, and only its sha256 is stored. sha256 and not a
password hash (bcrypt, argon2): those slow down guessing a secret a person chose; a 256-bit random secret cannot
be guessed at any speed, and a slow hash would cost every call it authenticates. The stored digest is compared
in constant time.

A key works while it is not revoked, not past its expiry, and its user is not disabled; `authenticate` says which
of these failed. Who may do what (admins manage users and anyone's keys, a user their own keys) is checked here
against the caller's identity; the role table (mesh.roles) sets the floor before a call gets here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from core_svc import db
from core_svc.listing import Page
from mesh.auth import USER_KEY_PREFIX
from mesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from mesh.identity import ROLES, Identity, canonical_role
from mesh.ids import new_id

USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
KEY_TEXT = re.compile(rf"^{USER_KEY_PREFIX}([0-9a-f]{{16}})_([0-9a-f]{{64}})$")
MAX_KEY_DESCRIPTION = 128
MAX_ACTIVE_KEYS = 100  # per user: ListApiKeys answers them all at once
MAX_TTL_S = 3650 * 86400
LAST_USED_EVERY = timedelta(minutes=1)  # a key's last use is written at most this often (a write per call is not)


@dataclass
class User:
    id: str
    name: str
    role: str
    disabled: bool
    create_time: datetime


@dataclass
class ApiKey:
    id: str
    user_id: str
    description: str
    create_time: datetime
    expire_time: datetime | None
    revoke_time: datetime | None
    last_used_time: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _user(row: db.UserRow) -> User:
    return User(row.id, row.name, row.role, row.disabled, _aware(row.create_time) or _now())


def _key(row: db.ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.id, row.user_id, row.description, _aware(row.create_time) or _now(),
        _aware(row.expire_time), _aware(row.revoke_time), _aware(row.last_used_time),
    )  # fmt: skip


class Accounts:
    def __init__(self, engine: Engine) -> None:
        self._sessions = db.session_factory(engine)

    # Users (admins only: mesh.roles)

    def create_user(self, name: str, role: str) -> User:
        if not USER_NAME.match(name):
            raise InvalidArgument.field(
                "user.name", "must be 1-64 characters: lowercase letters, digits, '.', '_', '-', '@', not first"
            )
        row = db.UserRow(id=new_id("usr"), name=name, role=_role(role), disabled=False, create_time=_now())
        with self._sessions() as session:
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                raise AlreadyExists(f"a user named {name!r} exists already") from None
        return _user(row)

    def get_user(self, user_id: str) -> User:
        if not user_id:
            raise InvalidArgument.field("id", "is required: the user's id (see ListUsers)")
        with self._sessions() as session:
            row = session.get(db.UserRow, user_id)
            if row is None:
                raise NotFound(f"no user has id {user_id!r}")
            return _user(row)

    def list_users(self, page_size: int, page_token: str) -> tuple[list[User], str]:
        with self._sessions() as session:
            rows, token = Page(page_size, page_token, "").fetch(session, select(db.UserRow), db.UserRow.id)
            return [_user(row) for row in rows], token

    def update_user(self, user_id: str, role: str | None, disabled: bool | None) -> User:
        changes: dict[str, object] = {}
        if role is not None:
            changes["role"] = _role(role)
        if disabled is not None:
            changes["disabled"] = disabled
        if not changes:
            raise InvalidArgument.field("update_mask", "names nothing to change: use 'role' and/or 'disabled'")
        self.get_user(user_id)
        with self._sessions() as session:
            session.execute(update(db.UserRow).where(db.UserRow.id == user_id).values(**changes))
            session.commit()
        return self.get_user(user_id)

    # Keys (a user's own, or anyone's for an admin)

    def create_key(self, caller: Identity, user_id: str, ttl_s: int, description: str) -> tuple[ApiKey, str]:
        """The new key and its text (shown once; only the secret's digest is kept)."""
        user = self.get_user(self._owner(caller, user_id))
        if user.disabled:
            raise FailedPrecondition(f"user {user.name!r} is disabled; enable them before making keys")
        if not 0 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument.field("ttl_seconds", f"must be 0 (no expiry) to {MAX_TTL_S} (ten years)")
        if len(description) > MAX_KEY_DESCRIPTION:
            raise InvalidArgument.field("description", f"is {len(description)} characters; at most 128")
        if len(self.list_keys(caller, user.id, include_inactive=False)) >= MAX_ACTIVE_KEYS:
            raise FailedPrecondition(f"user {user.name!r} has {MAX_ACTIVE_KEYS} active keys; revoke one first")
        key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
        created = _now()
        row = db.ApiKeyRow(
            id=key_id, user_id=user.id, secret_sha256=_digest(secret), description=description, create_time=created,
            expire_time=created + timedelta(seconds=ttl_s) if ttl_s else None,
        )  # fmt: skip
        with self._sessions() as session:
            session.add(row)
            session.commit()
        return _key(row), f"{USER_KEY_PREFIX}{key_id}_{secret}"

    def list_keys(self, caller: Identity, user_id: str, include_inactive: bool) -> list[ApiKey]:
        owner = self._owner(caller, user_id)
        now = _now()
        with self._sessions() as session:
            rows = session.scalars(
                select(db.ApiKeyRow).where(db.ApiKeyRow.user_id == owner).order_by(db.ApiKeyRow.create_time)
            )
            keys = [_key(row) for row in rows]
        if include_inactive:
            return keys
        return [k for k in keys if k.revoke_time is None and (k.expire_time is None or k.expire_time > now)]

    def revoke_key(self, caller: Identity, key_id: str) -> ApiKey:
        if not key_id:
            raise InvalidArgument.field("id", "is required: the key's id (see ListApiKeys)")
        with self._sessions() as session:
            row = session.get(db.ApiKeyRow, key_id)
            # Another user's key reads as missing to a non-admin: its id tells them nothing.
            if row is None or (not caller.is_admin and row.user_id != caller.subject):
                raise NotFound(f"no key of yours has id {key_id!r}")
            if row.revoke_time is None:
                row.revoke_time = _now()
                session.commit()
            return _key(row)

    def _owner(self, caller: Identity, user_id: str) -> str:
        """Whose keys a call is about: `user_id`, or the caller's own; only an admin names someone else."""
        if not user_id:
            if not caller.subject.startswith("usr_"):
                raise FailedPrecondition(
                    "this caller is not a user (a key from CONSTELLATION_API_KEYS or a service): name the user_id"
                )
            return caller.subject
        if user_id != caller.subject and not caller.is_admin:
            raise PermissionDenied("only an admin manages another user's keys")
        return user_id

    # Authentication

    def authenticate(self, key: str) -> Identity:
        """The user `key` stands for; Unauthenticated saying why when it is refused, Unavailable when the
        database does not answer. Never echoes the key."""
        match = KEY_TEXT.match(key)
        if match is None:
            raise Unauthenticated("the API key is not valid")
        key_id, secret = match.groups()
        now = _now()
        try:
            with self._sessions() as session:
                found = session.execute(
                    select(db.ApiKeyRow, db.UserRow)
                    .join(db.UserRow, db.UserRow.id == db.ApiKeyRow.user_id)
                    .where(db.ApiKeyRow.id == key_id)
                ).first()
                if found is None or not hmac.compare_digest(found[0].secret_sha256, _digest(secret)):
                    raise Unauthenticated("the API key is not valid")
                row, user = found
                if row.revoke_time is not None:
                    raise Unauthenticated(f"the API key {key_id} was revoked; ask for a new one")
                expire_time = _aware(row.expire_time)
                if expire_time is not None and expire_time <= now:
                    raise Unauthenticated(f"the API key {key_id} expired at {expire_time:%Y-%m-%d %H:%M} UTC")
                if user.disabled:
                    raise Unauthenticated(f"user {user.name!r} is disabled")
                last_used = _aware(row.last_used_time)
                if last_used is None or now - last_used >= LAST_USED_EVERY:
                    row.last_used_time = now
                    session.commit()
                return Identity(user.id, user.role, user.name)
        except DBAPIError:
            raise Unavailable("core's database does not answer, so user API keys cannot be checked") from None


def _role(role: str) -> str:
    try:
        return canonical_role(role)
    except ValueError:
        raise InvalidArgument.field("user.role", f"must be one of {', '.join(ROLES)}") from None
