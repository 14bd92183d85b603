"""Where a model's folder comes from: a local path, a git repository, or a Hugging Face id.

Each is copied into hosting's work area, so a later edit of the original
cannot change what was packaged. What is copied is bounded and checked first:
local folders (and file:// repositories) only from the model roots
(CONSTELLATION_HOSTING_MODEL_ROOTS), git only from the allowed hosts
(CONSTELLATION_HOSTING_GIT_HOSTS) and within a timeout, and every folder is
walked before it is copied: files, folders and links inside the folder only
(no devices, FIFOs or sockets), at most so many files and bytes. Refusals say
what is wrong with the request, never what exists on the host.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hosting_svc.settings import HostingSettings, HubSettings
from mesh.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable

HF_ID = re.compile(r"^hf://([A-Za-z0-9][\w.-]*)/([\w.-]+)(?:@([\w./-]+))?$")
IGNORED = (".git", "__pycache__", "*.pyc")  # never copied, so never counted


@dataclass(frozen=True)
class Source:
    kind: str  # "local" | "git" | "hf"
    location: str  # path, repository URL, or hf://org/name@revision
    branch: str = ""
    subdirectory: str = ""

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "branch": self.branch, "subdirectory": self.subdirectory}


def under_roots(path: Path, settings: HostingSettings) -> bool:
    """Whether `path`, with every link resolved, is one of the model roots or inside one."""
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in settings.model_roots)


def check_source(source: Source, settings: HostingSettings) -> None:
    outside = "is outside the folders hosting accepts model sources from (CONSTELLATION_HOSTING_MODEL_ROOTS)"
    location_field = {"local": "local_path", "git": "git.repo_url", "hf": "hugging_face_id"}.get(source.kind, "source")
    for field, value in ((location_field, source.location), ("git.branch", source.branch),
                         ("git.subdirectory", source.subdirectory)):  # fmt: skip
        if "\x00" in value:  # no path or URL holds one, and os.path would raise on it
            raise InvalidArgument.field(field, "must not contain a NUL character")
    if source.kind == "local":
        path = Path(source.location)
        if not path.is_absolute():
            raise InvalidArgument.field("local_path", f"{source.location!r} must be an absolute path")
        if not under_roots(path, settings):  # before anything that would tell whether it exists
            raise PermissionDenied(f"local_path {outside}")
        if not path.is_dir():
            raise InvalidArgument.field("local_path", f"{source.location} is not a folder")
    elif source.kind == "git":
        if not re.match(r"^(https?|ssh|git|file)://", source.location) and not Path(source.location).is_absolute():
            raise InvalidArgument.field(
                "git.repo_url", f"{source.location!r} is not a git URL (https://, ssh://, git://, file://)"
            )
        if source.subdirectory and (source.subdirectory.startswith("/") or ".." in Path(source.subdirectory).parts):
            raise InvalidArgument.field("git.subdirectory", "must be a relative path inside the repository")
        try:
            local, host = git_local_path(source.location), git_host(source.location)
        except ValueError:  # urllib's, e.g. for an unclosed IPv6 bracket: "https://[host/repo.git"
            raise InvalidArgument.field("git.repo_url", "is not a valid URL") from None
        if local is not None:
            if not under_roots(local, settings):
                raise PermissionDenied(f"git.repo_url {outside}")
        elif host not in settings.git_hosts:
            raise PermissionDenied(
                "git.repo_url: hosting clones only from the hosts in CONSTELLATION_HOSTING_GIT_HOSTS"
            )
    elif source.kind == "hf":
        if not HF_ID.match(source.location):
            raise InvalidArgument.field(
                "hugging_face_id", f"{source.location!r}: write hf://org/name or hf://org/name@revision"
            )
    else:
        raise InvalidArgument.field("source", "set one of git, local_path or hugging_face_id")


def git_local_path(url: str) -> Path | None:
    """The folder of a file:// URL or a plain path; None for a remote URL."""
    if url.startswith("file://"):
        return Path(urlsplit(url).path or "/")
    return Path(url) if Path(url).is_absolute() else None


def git_host(url: str) -> str:
    """host or host:port of a remote git URL, lowercase, without user."""
    return (urlsplit(url).netloc.rpartition("@")[2]).lower()


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in IGNORED)


def check_folder(folder: Path, settings: HostingSettings, field: str, links_within: Path | None = None) -> None:
    """Walk `folder` without following links; refuse what must not be copied. Links must be relative and
    resolve inside `links_within` (default the folder itself)."""
    within = Path(os.path.realpath(links_within or folder))
    files, size = 0, 0
    pending = [folder]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if _ignored(entry.name):
                    continue
                relative = os.path.relpath(entry.path, folder)
                mode = entry.stat(follow_symlinks=False).st_mode
                files += 1
                if files > settings.source_max_files:
                    raise InvalidArgument.field(
                        field, f"the model folder holds more than {settings.source_max_files} files"
                    )
                if stat.S_ISLNK(mode):
                    target = os.readlink(entry.path)
                    real = Path(os.path.realpath(entry.path))
                    if os.path.isabs(target) or not (real == within or within in real.parents):
                        raise InvalidArgument.field(
                            field, f"{relative} is a link to outside the model folder; copy the file in instead"
                        )
                elif stat.S_ISDIR(mode):
                    pending.append(Path(entry.path))
                elif stat.S_ISREG(mode):
                    size += entry.stat(follow_symlinks=False).st_size
                    if size > settings.source_max_bytes:
                        raise InvalidArgument.field(
                            field, f"the model folder is larger than {settings.source_max_bytes} bytes"
                        )
                else:
                    raise InvalidArgument.field(
                        field, f"{relative} is a device, FIFO or socket; a model folder holds files and folders only"
                    )


def clone(source: Source, into: Path, settings: HostingSettings) -> None:
    """git clone with a deadline; the whole process group (git and its helpers) is killed when it passes."""
    command = ["git", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=30"]
    command += ["clone", "--depth", "1", "--quiet", "--no-recurse-submodules"]
    if source.branch:
        command += ["--branch", source.branch]
    local = git_local_path(source.location) is not None
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "file" if local else "https:http:ssh:git",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=15",
    }
    process = subprocess.Popen(
        [*command, "--", source.location, str(into)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=settings.git_timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        shutil.rmtree(into, ignore_errors=True)
        raise Unavailable(
            f"git clone of {source.location} did not finish within {settings.git_timeout_s:g} s "
            "(CONSTELLATION_HOSTING_GIT_TIMEOUT_S); is the server answering?"
        ) from None
    if process.returncode != 0:
        shutil.rmtree(into, ignore_errors=True)
        lines = stderr.strip().splitlines()
        raise FailedPrecondition(f"git clone of {source.location} failed: {lines[-1][:300] if lines else 'no output'}")


def fetch(source: Source, destination: Path, settings: HostingSettings) -> Path:
    """Copy the model folder into `destination` (replaced), after checking it; returns it."""
    check_source(source, settings)
    if destination.exists():
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(*IGNORED)
    if source.kind == "local":
        check_folder(Path(source.location), settings, "local_path")
        shutil.copytree(source.location, destination, ignore=ignore, symlinks=True)
    elif source.kind == "git":
        cloned = destination.with_name(destination.name + ".git-clone")
        shutil.rmtree(cloned, ignore_errors=True)
        clone(source, cloned, settings)
        try:
            folder = cloned / source.subdirectory if source.subdirectory else cloned
            if not folder.is_dir() or not Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(cloned)):
                raise InvalidArgument.field(
                    "git.subdirectory", f"{source.subdirectory!r} is not a folder in the repository"
                )
            check_folder(folder, settings, "git")
            shutil.copytree(folder, destination, ignore=ignore, symlinks=True)
        finally:
            shutil.rmtree(cloned, ignore_errors=True)
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
        # the cache's snapshot files are links into the repository's blobs: allowed there, and copied as files
        check_folder(Path(snapshot), settings, "hugging_face_id", links_within=Path(snapshot).parent.parent)
        shutil.copytree(snapshot, destination, ignore=ignore, symlinks=False)
    return destination
