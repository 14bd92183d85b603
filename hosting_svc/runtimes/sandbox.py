"""Confinement of model code run as a local process (the local runtime's replicas and smoke tests).

Model code is untrusted: a model's `load()` and `predict()` run in a bubblewrap (`bwrap`) sandbox:

- on a root file system of its own: the system folders (/usr, /lib, /etc, read-only), Python's
  installation, and the model's venv, runtime and folder (read-only, at /opt/venv, /opt/runtime,
  /opt/model); nothing else of the host (no home folders, no hosting state). The one writable place
  is a private 64 MiB /tmp, so model code cannot write to the host's disk at all;
- in new pid, ipc, uts and network namespaces: it sees only a loopback of its own. The model server
  listens on a Unix socket in that /tmp, and `relay.py` (outside, hosting's code) forwards
  127.0.0.1:PORT to it through /proc/PID/root, so hosting, the monitor and the orchestrator reach it
  as before, and the model reaches nothing (not the other services on the host's loopback, not the
  internet);
- as an unprivileged user: when hosting runs as root, bwrap (which needs no user namespace then)
  sets the sandbox up and `setpriv` inside it becomes uid/gid 10001 (as in model images) with no
  capabilities and no_new_privs before the model server starts. Root inside a bwrap user namespace
  would still be root towards the files it sees, and bwrap started as 10001 could not reach hosting's
  home (often under a 0700 folder). Run as another user, bwrap makes a user namespace and the model
  runs as that user;
- within resource limits (`Limits`, set by `prlimit` right before the model server starts, so they
  bind the model and everything it starts): writable memory (RLIMIT_DATA), processes and threads
  (RLIMIT_NPROC), open files, file size, no core dumps, and CPU time for smoke tests. These are
  rlimits, not a cgroup: they need no privilege or delegated cgroup tree (hosts with cgroup v1, or
  v2 without delegation, as in CI), and they hold because the sandbox has no capabilities to raise
  them. RLIMIT_NPROC counts every task of the sandbox's uid, so it bounds all local model processes
  together; it is set only when hosting runs as root, where uid 10001 is the models' alone.

What the sandbox user reads must be readable by others, which `make_readable` ensures.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

SANDBOX_UID = 10001  # the user model images run as
SOCKET = "/tmp/model.sock"  # inside the sandbox; the relay reaches it as /proc/PID/root/tmp/model.sock
TMP_BYTES = 64 << 20  # the private /tmp, as in model containers
CPU_GRACE_S = 5  # between the CPU time limit's SIGXCPU and its SIGKILL
# What a model server reserves beyond the memory its model uses: glibc arenas (MALLOC_ARENA_MAX of them,
# each grown with model_runtime.memory's 64 MiB top pad), thread stacks (8 MiB each), Python and its
# libraries. RLIMIT_DATA counts these reservations, while a container's memory limit counts pages used.
RUNTIME_RESERVE_BYTES = 768 << 20
MALLOC_ARENAS = 4  # fixed, so the reserve does not grow with the machine's cores


@dataclass(frozen=True)
class Limits:
    """The rlimits a sandboxed model server runs under."""

    memory_bytes: int  # the model's memory (constellation.yaml resources.memory); RUNTIME_RESERVE_BYTES is added
    processes: int  # RLIMIT_NPROC: tasks (processes and threads) of the sandbox uid, all sandboxes together
    open_files: int
    cpu_s: int = 0  # 0: no CPU time limit (replicas); smoke tests get one
    file_bytes: int = TMP_BYTES  # no file can be larger than /tmp anyway

    def prlimit(self, root: bool) -> list[str]:
        argv = [
            "prlimit",
            f"--data={self.memory_bytes + RUNTIME_RESERVE_BYTES}",
            f"--nofile={self.open_files}",
            f"--fsize={self.file_bytes}",
            "--core=0",
        ]
        if root:
            argv.append(f"--nproc={self.processes}")
        if self.cpu_s:  # SIGXCPU at the limit (the hard limit's SIGKILL would say nothing), SIGKILL soon after
            argv.append(f"--cpu={self.cpu_s}:{self.cpu_s + CPU_GRACE_S}")
        return [*argv, "--"]


def available() -> bool:
    return all(shutil.which(tool) is not None for tool in ("bwrap", "setpriv", "prlimit"))


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


def command(binds: dict[str, Path], argv: list[str], env: dict[str, str], limits: Limits) -> list[str]:
    """bwrap (+ setpriv) + prlimit around `argv`: `binds` maps each sandbox path to a host folder (read-only)."""
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
        "--perms",
        "1777",  # writable by the sandbox user, as /tmp is in model containers
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
        bwrap += ["--ro-bind", str(folder), destination]
    for key, value in {**env, "MALLOC_ARENA_MAX": str(MALLOC_ARENAS)}.items():
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
    return ["setpriv", "--pdeathsig", "KILL", *bwrap, *limits.prlimit(root), *argv]
