"""Who a presented API key stands for: the one key check every service's interceptor asks.

Three kinds of key:

- keys from CONSTELLATION_API_KEYS (`key:role`), compared in constant time, identity "key:<fingerprint>";
- the mesh's service key (CONSTELLATION_SERVICE_KEY), which services present to each other: identity `service`;
- user keys, "cst_<key id>_<secret>", kept in core's database (core_svc.accounts). Core looks them up in its
  database directly; the other services ask core's IdentityService.Authenticate (`RemoteKeys`) and remember each
  answer for CONSTELLATION_AUTH_CACHE_S seconds (default 5), at most MAX_CACHED keys, so a revoked or expired key,
  or a disabled user, stops working everywhere within that time without a restart.

A lookup raises mesh.errors.Unauthenticated for a key it refuses and Unavailable when it cannot tell (core or its
database does not answer); keys from the settings keep working then.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import grpc

from constellation.core.v1 import identity_pb2, identity_pb2_grpc
from mesh.errors import PermissionDenied, Unauthenticated, Unavailable
from mesh.identity import ON_BEHALF_HEADER, SERVICE_IDENTITY, SERVICE_ROLE, Identity, from_on_behalf

USER_KEY_PREFIX = "cst_"
MAX_CACHED = 4096

ROLE_TO_PROTO = {
    "viewer": identity_pb2.ROLE_VIEWER,
    "editor": identity_pb2.ROLE_EDITOR,
    "admin": identity_pb2.ROLE_ADMIN,
    SERVICE_ROLE: identity_pb2.ROLE_SERVICE,
}
ROLE_FROM_PROTO = {number: name for name, number in ROLE_TO_PROTO.items()}

KeyLookup = Callable[[str], Identity]
"""A user key ("cst_...") -> its identity; raises Unauthenticated or Unavailable."""


def fingerprint(key: str) -> str:
    """A key's name in logs and identities: not the key, and not enough to find it."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def principal_to_proto(who: Identity) -> identity_pb2.Principal:
    return identity_pb2.Principal(subject=who.subject, role=ROLE_TO_PROTO[who.role], name=who.name)


class Authenticator:
    """Turns the key a caller presents into an Identity. `enabled` False: authentication is off."""

    def __init__(self, api_keys: dict[str, str], service_key: str = "", user_keys: KeyLookup | None = None) -> None:
        self.enabled = bool(api_keys)
        self._api_keys = [(key.encode(), role) for key, role in api_keys.items()]
        self._service_key = service_key.encode()
        self._user_keys = user_keys

    def authenticate(self, presented: str) -> Identity:
        key = presented.encode()
        for candidate, role in self._api_keys:
            if hmac.compare_digest(candidate, key):
                return Identity(f"key:{fingerprint(presented)}", role)
        if self._service_key and hmac.compare_digest(self._service_key, key):
            return SERVICE_IDENTITY
        if self._user_keys is not None and presented.startswith(USER_KEY_PREFIX):
            return self._user_keys(presented)
        raise Unauthenticated("the API key is not valid")

    @staticmethod
    def acting_for(caller: Identity, on_behalf: str) -> Identity:
        """Who the call is for: the user named in ON_BEHALF_HEADER when a service sends it, else the caller.
        Only a service may speak for someone else."""
        if not on_behalf:
            return caller
        if caller.role != SERVICE_ROLE:
            raise PermissionDenied(f"only a mesh service may send {ON_BEHALF_HEADER}; remove it")
        try:
            return from_on_behalf(on_behalf)
        except ValueError as error:
            raise PermissionDenied(str(error)) from None


class RemoteKeys:
    """User keys checked by core's IdentityService.Authenticate, each answer remembered for `ttl_s` seconds
    (refusals too, so a flood of bad keys costs core one call per key and TTL; 'cannot tell' is not kept)."""

    def __init__(self, channel: grpc.Channel, service_key: str, ttl_s: float, timeout_s: float = 3.0) -> None:
        self._channel = channel  # to core: mTLS with the service's own certificate when the mesh has TLS
        self._stub = identity_pb2_grpc.IdentityServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {service_key}"),)
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        # sha256 of a key -> (until when, its identity or why it is refused)
        self._cache: OrderedDict[bytes, tuple[float, Identity | str]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> Identity:
        digest = hashlib.sha256(key.encode()).digest()  # the cache holds no key
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(digest)
                return _answer(cached[1])
        answer = self._ask(key)
        if self.ttl_s > 0:
            with self._lock:
                self._cache[digest] = (now + self.ttl_s, answer)
                self._cache.move_to_end(digest)
                while len(self._cache) > MAX_CACHED:
                    self._cache.popitem(last=False)
        return _answer(answer)

    def close(self) -> None:
        self._channel.close()

    def _ask(self, key: str) -> Identity | str:
        try:
            who = self._stub.Authenticate(
                identity_pb2.AuthenticateRequest(api_key=key), timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return error.details() or "the API key is not valid"
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    f"core, which checks API keys, did not answer ({error.code().name}); try again shortly"
                ) from None
            # Core refused the check itself: typically services that do not share one CONSTELLATION_SERVICE_KEY.
            raise Unavailable(
                f"core refused this service's key check ({error.code().name}); every service needs the same "
                "CONSTELLATION_SERVICE_KEY"
            ) from None
        return Identity(who.subject, ROLE_FROM_PROTO.get(who.role, "viewer"), who.name)


def _answer(answer: Identity | str) -> Identity:
    if isinstance(answer, str):
        raise Unauthenticated(answer)
    return answer
