"""Pushing and pulling model images, with credentials that never reach a log or a status message.

Credentials come from CONSTELLATION_REGISTRY_USERNAME / _PASSWORD, for the
one registry named by CONSTELLATION_REGISTRY_HOST, or from the JSON file named
by CONSTELLATION_REGISTRY_AUTH_FILE:
`{"127.0.0.1:5000": {"username": "...", "password": "..."}}` (per registry
host). A registry is sent only its own credentials, never another's (a push
or pull naming any other host goes without). Transient failures (connection
refused, 5xx) are retried with backoff.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from docker.errors import APIError

from hosting_svc import images
from hosting_svc.domain import HostedModel
from hosting_svc.settings import HostingSettings
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger("hosting.registry")

REFERENCE = re.compile(r"^(?P<repo>[a-z0-9.:_/-]+?)(?::(?P<tag>[A-Za-z0-9_.+-]{1,128}))?$")
TRANSIENT = ("connection refused", "timeout", "temporarily unavailable", "502", "503", "504", "eof", "connection reset")


class SecretScrubber(logging.Filter):
    """Replaces every known secret in log records with ***."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Registry:
    def __init__(
        self, engine: images.Engine | None, settings: HostingSettings, attempts: int = 4, backoff_s: float = 0.5
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.secrets = [c["password"] for c in self._all_credentials().values() if c.get("password")]
        if settings.registry_username and not settings.registry_host:
            log.warning("CONSTELLATION_REGISTRY_USERNAME is set without CONSTELLATION_REGISTRY_HOST: not used")
        scrubber = SecretScrubber(self.secrets)
        for handler in logging.getLogger().handlers:
            handler.addFilter(scrubber)

    def _all_credentials(self) -> dict[str, dict]:
        found: dict[str, dict] = {}
        path = self.settings.registry_auth_file
        if path and Path(path).is_file():
            found.update(json.loads(Path(path).read_text()))
        if self.settings.registry_username:
            if self.settings.registry_host:
                found[self.settings.registry_host.lower()] = {
                    "username": self.settings.registry_username,
                    "password": self.settings.registry_password,
                }
        return found

    def credentials(self, registry_host: str) -> dict | None:
        """The credentials configured for exactly this host (host:port), or None."""
        every = {host.lower(): value for host, value in self._all_credentials().items()}
        return every.get(registry_host.lower())

    def _engine(self) -> images.Engine:
        if self.engine is None:
            raise FailedPrecondition("pushing and pulling images needs the Docker engine, which does not answer here")
        return self.engine

    def _retry(self, what: str, action: Callable[[], object]) -> object:
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except (APIError, RegistryError) as error:
                text = scrub(str(error), self.secrets)
                lowered = text.lower()
                if "unauthorized" in lowered or "authentication required" in lowered or "no basic auth" in lowered:
                    raise Unauthenticated(
                        f"{what}: the registry refused the credentials (set "
                        "CONSTELLATION_REGISTRY_USERNAME/PASSWORD or CONSTELLATION_REGISTRY_AUTH_FILE)"
                    ) from None
                if "denied" in lowered or "forbidden" in lowered:
                    raise PermissionDenied(f"{what}: the registry denied access to this repository") from None
                if "not found" in lowered or "manifest unknown" in lowered:
                    raise NotFound(f"{what}: {text}") from None
                if attempt == self.attempts or not any(t in lowered for t in TRANSIENT):
                    raise Unavailable(f"{what} failed after {attempt} attempt(s): {text}") from None
                log.warning("retrying", extra={"what": what, "attempt": attempt})
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def push(self, model: HostedModel, repository: str, note: Callable[[str], None]) -> tuple[str, str]:
        if not model.image:
            raise FailedPrecondition(f"{model.name}:{model.version} has no image to push; package it with Docker first")
        if not repository or not REFERENCE.match(repository) or ":" in repository.split("/")[-1]:
            raise InvalidArgument.field(
                "repository", f"{repository!r}: write registry/prefix, e.g. 127.0.0.1:5000/constellation"
            )
        engine = self._engine()
        target = f"{repository.rstrip('/')}/{model.name}"
        auth = self.credentials(repository.split("/")[0])

        def attempt() -> None:
            for line in engine.push(model.image, target, model.version, auth):
                if "error" in line:
                    raise RegistryError(line.get("errorDetail", {}).get("message") or line["error"])
                if line.get("status") == "Pushed":
                    note(f"pushed layer {line.get('id', '')}")

        note(f"pushing {target}:{model.version}")
        self._retry(f"push {target}:{model.version}", attempt)
        digest = engine.client.images.get(f"{target}:{model.version}").attrs.get("RepoDigests", [""])
        found = next((d.split("@", 1)[1] for d in digest if d.startswith(target)), "")
        return f"{target}:{model.version}", found

    def pull(self, image: str) -> tuple[str, str]:
        match = REFERENCE.match(image or "")
        if not match or "/" not in image:
            raise InvalidArgument.field("image", f"{image!r}: write registry/repository:tag")
        engine = self._engine()
        repository, tag = match.group("repo"), match.group("tag") or "latest"
        auth = self.credentials(repository.split("/")[0])
        pulled = self._retry(f"pull {repository}:{tag}", lambda: engine.pull(repository, tag, auth))
        digests = pulled.attrs.get("RepoDigests", [])  # type: ignore[attr-defined]  # engine.pull returns docker's untyped Image
        found = next(
            (d.split("@", 1)[1] for d in digests if d.startswith(repository)),
            digests[0].split("@", 1)[1] if digests else "",
        )
        return f"{repository}:{tag}", found


class RegistryError(Exception):
    """An error line in the engine's push stream."""
