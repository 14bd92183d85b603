"""The mesh's generated credentials in $CONSTELLATION_HOME/credentials/, and the console's one-time login tokens.

`admin.key` is the bootstrap admin API key that every service, the gateway's console server, the SDK and the CLI
use when no key is configured (CONSTELLATION_API_KEYS / CONSTELLATION_API_KEY); `service.key` is the key services
present to each other. `constellation up` makes both (`ensure`); services only read them.

Invariant: nobody but the owner can read a credential, not even for an instant. The folder is made 0700 and each
file is written to a temporary name created with O_CREAT | O_EXCL and mode 0600 (the umask can only narrow it),
then hard-linked to its final name, which fails if the name exists: a reader sees no file or the whole file, and
two `up`s racing keep the first key. Reading refuses a folder or file that is a symlink, is owned by another user
or grants the group or others any permission, with the command that fixes it.

Login tokens (for `http://…/?login=<token>`, like Jupyter's token link) are stored only as SHA-256 digests with
their expiry, in `login-tokens.json` (0600, rewritten under an flock); redeeming one removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

FOLDER = "credentials"
ADMIN_KEY = "admin.key"
SERVICE_KEY = "service.key"
LOGIN_TOKENS = "login-tokens.json"
LOCK = ".lock"
MAX_KEY_BYTES = 1024
# Unredeemed tokens kept at most; older ones are dropped first.
MAX_LOGIN_TOKENS = 100


class CredentialError(ValueError):
    """A credential file or folder that must not be used (wrong owner or permissions, not a regular file)."""


def folder(home: Path) -> Path:
    return home / FOLDER


def admin_key_path(home: Path) -> Path:
    return folder(home) / ADMIN_KEY


def service_key_path(home: Path) -> Path:
    return folder(home) / SERVICE_KEY


def _check_private(path: Path, status: os.stat_result, wanted: int) -> None:
    """Refuse a credential (or its folder) another user owns or could read."""
    kind = "folder" if wanted == 0o700 else "file"
    if status.st_uid != os.geteuid():
        raise CredentialError(
            f"credential {kind} {path} is owned by uid {status.st_uid}, not by this user (uid {os.geteuid()}); "
            f"refusing to use it: remove it and run `constellation up` to make a new one"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise CredentialError(
            f"credential {kind} {path} has mode {mode:04o}, readable by others; refusing to use it: "
            f"`chmod {wanted:o} {path}` if nobody else could have read it, else remove it and run `constellation up` "
            "to make a new one"
        )


def _private_folder(home: Path, create: bool) -> Path | None:
    """The credentials folder, checked (and made 0700 when `create`); None when it is missing and not `create`."""
    path = folder(home)
    if create:
        home.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(status.st_mode):
        raise CredentialError(
            f"{path} must be a folder (not a symlink or a file); remove it and run `constellation up`"
        )
    _check_private(path, status, 0o700)
    return path


def read_key(path: Path) -> str | None:
    """The key in `path`, or None when the file does not exist. Raises CredentialError for a file that is not a
    private regular file of this user, or that holds no key."""
    if _private_folder(path.parent.parent, create=False) is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:  # ELOOP: a symlink
        raise CredentialError(f"credential file {path} cannot be opened safely ({error.strerror}); remove it") from None
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise CredentialError(f"credential file {path} is not a regular file; remove it")
        _check_private(path, status, 0o600)
        key = file.read(MAX_KEY_BYTES + 1).decode("utf-8", "replace").strip()
    if not key or len(key) > MAX_KEY_BYTES or any(c.isspace() for c in key):
        raise CredentialError(f"credential file {path} does not hold one key; remove it and run `constellation up`")
    return key


def _write_private(path: Path, content: bytes) -> bool:
    """Create `path` (0600) with `content` unless it exists. True when this call created it."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _ensure_key(path: Path) -> tuple[str, bool]:
    created = _write_private(path, (secrets.token_urlsafe(32) + "\n").encode())
    key = read_key(path)
    if key is None:
        raise CredentialError(f"credential file {path} vanished while it was being made; run `constellation up` again")
    return key, created


def ensure(home: Path) -> tuple[str, bool]:
    """Make admin.key and service.key under `home` when missing. Returns the admin key and whether it is new."""
    _private_folder(home, create=True)
    admin_key, created = _ensure_key(admin_key_path(home))
    _ensure_key(service_key_path(home))
    return admin_key, created


def read_admin_key(home: Path) -> str | None:
    return read_key(admin_key_path(home))


# --------------------------------------------------------------------------- one-time console login tokens


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@contextlib.contextmanager
def _locked_tokens(home: Path) -> Iterator[dict[str, float]]:
    """The stored tokens (digest -> expiry, epoch seconds) under an exclusive lock; changes are written back."""
    path = _private_folder(home, create=True)
    assert path is not None
    lock_fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        tokens_path = path / LOGIN_TOKENS
        try:
            tokens = json.loads(_read_private_text(tokens_path))
        except FileNotFoundError:
            tokens = {}
        now = time.time()
        tokens = {digest: expiry for digest, expiry in tokens.items() if expiry > now}
        yield tokens
        temporary = tokens_path.with_name(f".{LOGIN_TOKENS}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(tokens, file)
        os.replace(temporary, tokens_path)
    finally:
        os.close(lock_fd)


def _read_private_text(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "r") as file:
        _check_private(path, os.fstat(file.fileno()), 0o600)
        return file.read(1024 * 1024)


def issue_login_token(home: Path, ttl_s: float) -> str:
    """A new random login token, valid once within `ttl_s` seconds; only its digest is stored."""
    token = secrets.token_urlsafe(32)
    with _locked_tokens(home) as tokens:
        tokens[_digest(token)] = time.time() + ttl_s
        for digest in sorted(tokens, key=tokens.__getitem__)[:-MAX_LOGIN_TOKENS]:
            del tokens[digest]
    return token


def redeem_login_token(home: Path, token: str) -> bool:
    """True, once, for a token issued here that has not expired; it is removed either way."""
    if not token or len(token) > 256:
        return False
    digest = _digest(token)
    with _locked_tokens(home) as tokens:
        found = next((d for d in tokens if hmac.compare_digest(d, digest)), None)
        if found is None:
            return False
        del tokens[found]
    return True


def main(argv: list[str]) -> int:
    """`python -m mesh.credentials HOME`: make the credentials (compose's init step); prints where they are."""
    if len(argv) != 1:
        print("usage: python -m mesh.credentials HOME", file=sys.stderr)
        return 2
    home = Path(argv[0])
    try:
        _, created = ensure(home)
    except CredentialError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{'made' if created else 'kept'} the admin key {admin_key_path(home)} and {service_key_path(home)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
