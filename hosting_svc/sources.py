"""Where a model's folder comes from: a local path, a git repository, or a Hugging Face id.

Each is copied into hosting's work area, so a later edit of the original
cannot change what was packaged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hosting_svc.settings import HubSettings
from mesh.errors import FailedPrecondition, InvalidArgument

HF_ID = re.compile(r"^hf://([A-Za-z0-9][\w.-]*)/([\w.-]+)(?:@([\w./-]+))?$")


@dataclass(frozen=True)
class Source:
    kind: str  # "local" | "git" | "hf"
    location: str  # path, repository URL, or hf://org/name@revision
    branch: str = ""
    subdirectory: str = ""

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "branch": self.branch, "subdirectory": self.subdirectory}


def check_source(source: Source) -> None:
    if source.kind == "local":
        path = Path(source.location)
        if not path.is_absolute():
            raise InvalidArgument.field("local_path", f"{source.location!r} must be an absolute path")
        if not path.is_dir():
            raise InvalidArgument.field("local_path", f"{source.location} is not a folder")
    elif source.kind == "git":
        if not re.match(r"^(https?|ssh|git|file)://", source.location) and not Path(source.location).is_absolute():
            raise InvalidArgument.field(
                "git.repo_url", f"{source.location!r} is not a git URL (https://, ssh://, git://, file://)"
            )
        if source.subdirectory and (source.subdirectory.startswith("/") or ".." in Path(source.subdirectory).parts):
            raise InvalidArgument.field("git.subdirectory", "must be a relative path inside the repository")
    elif source.kind == "hf":
        if not HF_ID.match(source.location):
            raise InvalidArgument.field(
                "hugging_face_id", f"{source.location!r}: write hf://org/name or hf://org/name@revision"
            )
    else:
        raise InvalidArgument.field("source", "set one of git, local_path or hugging_face_id")


def fetch(source: Source, destination: Path) -> Path:
    """Copy the model folder into `destination` (replaced); returns it."""
    check_source(source)
    if destination.exists():
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc")
    if source.kind == "local":
        shutil.copytree(source.location, destination, ignore=ignore, symlinks=True)
    elif source.kind == "git":
        clone = destination.with_name(destination.name + ".git-clone")
        shutil.rmtree(clone, ignore_errors=True)
        command = ["git", "clone", "--depth", "1", "--quiet"]
        if source.branch:
            command += ["--branch", source.branch]
        result = subprocess.run(
            [*command, source.location, str(clone)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        if result.returncode != 0:
            shutil.rmtree(clone, ignore_errors=True)
            raise FailedPrecondition(
                f"git clone of {source.location} failed: "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}"
            )
        folder = clone / source.subdirectory if source.subdirectory else clone
        if not folder.is_dir():
            shutil.rmtree(clone, ignore_errors=True)
            raise InvalidArgument.field(
                "git.subdirectory", f"{source.subdirectory!r} is not a folder in the repository"
            )
        shutil.copytree(folder, destination, ignore=ignore, symlinks=True)
        shutil.rmtree(clone, ignore_errors=True)
    else:
        match = HF_ID.match(source.location)
        assert match
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import LocalEntryNotFoundError
        except ImportError:
            raise FailedPrecondition("hf:// sources need huggingface_hub: pip install huggingface_hub") from None
        hub = HubSettings.from_env()
        try:
            snapshot = snapshot_download(
                f"{match.group(1)}/{match.group(2)}",
                revision=match.group(3) or None,
                cache_dir=hub.cache or None,
                local_files_only=hub.offline,
            )
        except LocalEntryNotFoundError:
            raise FailedPrecondition(
                f"{source.location} is not in the Hugging Face cache and the hub cannot be reached "
                f"(HF_HUB_OFFLINE={hub.offline_raw})"
            ) from None
        shutil.copytree(snapshot, destination, ignore=ignore, symlinks=False)
    return destination
