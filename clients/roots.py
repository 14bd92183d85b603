"""Where the mesh may read scenes and write results: the allowed roots, and the one check against them.

A dataset URI must lie under a data root, an export URI under an export root
(file://), or in an allowed bucket (s3://). Core applies the check when a
dataset or pipeline is saved or validated, and the orchestrator again at
LaunchRun, since it does not trust its caller. A file:// path is compared
after `..` and symlinks are resolved (a link inside a root that points out of
it is outside). The check reads no file: its answer, and its message, are the
same whether the path exists, is a folder, a device or nothing at all, so a
client learns nothing about the host from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from clients.storage import StorageError, parse
from mesh.config import EnvSettings, comma_list, env_field, home_path

# The sample scenes that ship beside the code (the repository's examples/data), allowed by default so
# `make demo` and the README's examples work from a checkout.
SAMPLE_DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
ANY_BUCKET = "*"

Purpose = Literal["data", "export"]


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser() for part in comma_list(raw))


def _resolved(path: str) -> Path | None:
    """`path` with `..` and symlinks resolved (it need not exist); None when it cannot be a path."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError, RuntimeError):  # an embedded NUL, a symlink loop
        return None


class StorageRoots(EnvSettings):
    """The allowed data roots, export roots and S3 buckets, read by core and the orchestrator."""

    home_raw: str = env_field("CONSTELLATION_HOME", "", "local state; the default roots below live under it")
    data_roots_raw: str = env_field(
        "CONSTELLATION_DATA_ROOTS",
        "",
        "folders dataset file:// URIs must lie in, comma separated (default $CONSTELLATION_HOME/data and the "
        "sample scenes in examples/data beside the code)",
    )
    export_roots_raw: str = env_field(
        "CONSTELLATION_EXPORT_ROOTS",
        "",
        "folders export file:// URIs must lie in, comma separated (default $CONSTELLATION_HOME/outputs, where the "
        "agent's plans export)",
    )
    s3_buckets_raw: str = env_field(
        "CONSTELLATION_S3_BUCKETS",
        "",
        "buckets dataset and export s3:// URIs may name, comma separated; `*` allows any bucket; empty: none",
    )

    @field_validator("data_roots_raw", "export_roots_raw")
    @classmethod
    def _absolute(cls, value: str) -> str:
        relative = [str(p) for p in _paths(value) if not p.is_absolute()]
        if relative:
            raise ValueError(f"roots must be absolute folders; {', '.join(relative)} is not")
        return value

    @property
    def data_roots(self) -> tuple[Path, ...]:
        return _paths(self.data_roots_raw) or (home_path(self.home_raw) / "data", SAMPLE_DATA)

    @property
    def export_roots(self) -> tuple[Path, ...]:
        return _paths(self.export_roots_raw) or (home_path(self.home_raw) / "outputs",)

    @property
    def s3_buckets(self) -> frozenset[str]:
        return frozenset(comma_list(self.s3_buckets_raw))

    def roots(self, purpose: Purpose) -> tuple[Path, ...]:
        return self.data_roots if purpose == "data" else self.export_roots

    def refusal(self, uri: str, purpose: Purpose) -> str | None:
        """Why `uri` may not be used as a dataset (`data`) or export destination (`export`), as a phrase to follow
        the URI ("is outside ..."), or None when it may.
        A URI that is not a storage URI at all is left to the form checks (pipeline.rules)."""
        try:
            location = parse(uri)
        except StorageError:
            return None
        setting = "CONSTELLATION_DATA_ROOTS" if purpose == "data" else "CONSTELLATION_EXPORT_ROOTS"
        what = "a dataset" if purpose == "data" else "an export"
        if location.scheme == "s3":
            if {".", ".."} & set(location.path.split("/")):
                return "has a '.' or '..' segment in its object key, which Constellation does not accept"
            if ANY_BUCKET in self.s3_buckets or location.bucket in self.s3_buckets:
                return None
            return f"names a bucket {what} may not use: the operator lists allowed buckets in CONSTELLATION_S3_BUCKETS"
        path = _resolved(location.path)
        if path is not None:
            for root in self.roots(purpose):
                allowed = _resolved(str(root))
                if allowed is not None and path.is_relative_to(allowed):
                    return None
        return f"is outside the roots {what} may use: the operator sets them with {setting}"
