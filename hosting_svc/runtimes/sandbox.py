"""Confinement of model code run as a local process (the local runtime's replicas and smoke tests).

Model code is untrusted: a model's `load()` and `predict()` run in a bubblewrap (`bwrap`) sandbox:

- on a root file system of its own: the system folders (/usr, /lib, /etc, read-only), Python's
  installation, and the model's venv, runtime and folder (read-only, at /opt/venv, /opt/runtime,
  /opt/model); nothing else of the host (no home folders, no hosting state), a private 64 MiB /tmp;
- in new pid, ipc, uts and network namespaces: it sees only a loopback of its own. It listens on a
  Unix socket in a folder shared with the host, and `relay.py` (outside, hosting's code) forwards
  127.0.0.1:PORT to it, so hosting, the monitor and the orchestrator reach it as before, and the
  model reaches nothing (not the other services on the host's loopback, not the internet);
- as an unprivileged user: when hosting runs as root, bwrap (which needs no user namespace then)
  sets the sandbox up and `setpriv` inside it becomes uid/gid 10001 (as in model images) with no
  capabilities and no_new_privs before the model server starts. Root inside a bwrap user namespace
  would still be root towards the files it sees, and bwrap started as 10001 could not reach hosting's
  home (often under a 0700 folder). Run as another user, bwrap makes a user namespace and the model
  runs as that user.

What the sandbox user reads must be readable by others, which `make_readable` ensures.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SANDBOX_UID = 10001  # the user model images run as
SOCKET_DIR = "/run/model"
TMP_BYTES = 64 << 20  # the private /tmp, as in model containers


def available() -> bool:
    return shutil.which("bwrap") is not None and shutil.which("setpriv") is not None


def python_prefix(venv: Path) -> Path:
    """The Python installation a venv was made from (its pyvenv.cfg `home`, one folder up)."""
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip()).parent
    raise RuntimeError(f"{venv / 'pyvenv.cfg'} names no home")


def make_readable(*folders: Path) -> None:
    """Files readable (and folders searchable) by others, so the sandbox user can read them; nothing writable."""
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, (os.stat(path).st_mode & 0o755) | 0o555)
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    mode = os.stat(path).st_mode
                    os.chmod(path, (mode & 0o755) | 0o444 | (0o111 if mode & 0o100 else 0))
        os.chmod(folder, (os.stat(folder).st_mode & 0o755) | 0o555)


def socket_folder(path: Path) -> Path:
    """The folder the model's socket is made in: empty, writable only by the sandbox user."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_UID)
    return path


def command(binds: dict[str, Path], writable: str, argv: list[str], env: dict[str, str]) -> list[str]:
    """bwrap (+ setpriv) around `argv`: `binds` maps each sandbox path to a host folder (read-only but `writable`)."""
    bwrap = [
        "bwrap",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",  # a loopback of its own, nothing else
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(TMP_BYTES),
        "--tmpfs",
        "/tmp",
    ]
    root = os.geteuid() == 0
    if not root:
        bwrap.insert(1, "--unshare-user")
    made = {"/"}
    for system in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(system):
            bwrap += ["--symlink", os.readlink(system), system]
        elif os.path.isdir(system):
            bwrap += ["--ro-bind", system, system]
        made.add(system)
    for destination, folder in binds.items():
        parents = [str(p) for p in reversed(Path(destination).parents) if str(p) not in made]
        for parent in parents:  # made explicitly: bwrap would make them unreadable to the sandbox user
            bwrap += ["--dir", parent]
            made.add(parent)
        bwrap += ["--bind" if destination == writable else "--ro-bind", str(folder), destination]
    for key, value in env.items():
        bwrap += ["--setenv", key, value]
    bwrap += ["--chdir", "/tmp", "--"]
    if root:
        bwrap += [
            "setpriv",
            "--reuid",
            str(SANDBOX_UID),
            "--regid",
            str(SANDBOX_UID),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
    # setpriv outside: the relay's death kills the sandbox
    return ["setpriv", "--pdeathsig", "KILL", *bwrap, *argv]
