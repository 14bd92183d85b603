"""Start, stop and inspect a local mesh: the four services and Envoy as background processes.

State lives in $CONSTELLATION_HOME (default ~/.constellation): run/mesh.json
names every process (and the certificates folder when the mesh runs TLS),
logs/ holds their output, certs/ the certificates `up --tls` makes, credentials/
the generated admin key (made by `up` when no key is configured and
authentication is on).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import grpc

from constellation.hosting.v1 import hosting_pb2
from constellation_sdk.client import Client
from gateway import admin
from gateway import supervisor as gateway
from gateway.settings import GatewaySettings
from mesh import certs, config, credentials

SERVICES = ("core", "hosting", "orchestrator", "agent")
# The services `up --replicas N` runs N of: each replica is stateless over the shared database (docs/architecture.md
# "Replicas and leases").
REPLICATED = ("core", "hosting", "orchestrator", "agent")
log = logging.getLogger("constellation.mesh")


@dataclass
class MeshPaths:
    home: Path

    @property
    def state(self) -> Path:
        return self.home / "run" / "mesh.json"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def certs(self) -> Path:
        return self.home / "certs"


def tls_dir_of(state: dict | None) -> Path | None:
    """The certificates folder a running mesh uses (None: plaintext)."""
    return Path(state["tls_dir"]) if state and state.get("tls_dir") else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def read_state(paths: MeshPaths) -> dict | None:
    if not paths.state.exists():
        return None
    return json.loads(paths.state.read_text())


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_serving(
    address: str, process: subprocess.Popen, log_path: Path, timeout_s: float, tls_dir: Path | None
) -> None:
    deadline = time.monotonic() + timeout_s
    with Client(address, tls_dir=tls_dir) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"exited with code {process.returncode}; log tail:\n{_tail(log_path)}")
            if client.serving(timeout_s=1.0):
                return
            time.sleep(0.1)
    raise TimeoutError(f"not SERVING after {timeout_s:.0f}s; log tail:\n{_tail(log_path)}")


def _tls_setup(env: dict[str, str], paths: MeshPaths, tls: bool) -> Path | None:
    """The certificates folder the mesh will use (made or renewed when `tls` asks for it), set in `env`; None and a
    warning for plaintext."""
    folder = config.tls_dir(env.get("CONSTELLATION_TLS_DIR", ""))
    if folder is None and tls:
        folder = paths.certs
    if folder is None:
        log.warning(
            "the mesh serves plaintext on loopback: calls are unencrypted and services do not verify their peers; "
            "`constellation up --tls` (or CONSTELLATION_TLS_DIR) runs it with TLS and mTLS"
        )
        return None
    if tls:
        certs.issue(folder)  # keeps the CA and every certificate that is still good
    env["CONSTELLATION_TLS_DIR"] = str(folder)
    return folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _replica_addresses(env: dict[str, str], replicas: int) -> dict[str, str]:
    """Each service's address, or (REPLICATED with `replicas` > 1) its replicas' addresses comma separated: the
    first on the configured port, the others on free ones. Set in `env` as the peers' addresses, so services
    balance their calls over the replicas (mesh.channels) and the gateway gets one endpoint each."""
    addresses = {}
    for service in SERVICES:
        settings = config.load(service, env)
        ports = [settings.port] + [_free_port() for _ in range(replicas - 1 if service in REPLICATED else 0)]
        addresses[service] = ",".join(f"{settings.host}:{port}" for port in ports)
        if len(ports) > 1:
            env[f"CONSTELLATION_{service.upper()}_ADDR"] = addresses[service]
    return addresses


def up(env: dict[str, str] | None = None, timeout_s: float = 60.0, tls: bool = False, replicas: int = 1) -> dict:
    """Start the mesh in the background and wait until every part answers. Returns the state.

    `replicas`: how many processes of each service in REPLICATED to run (on one database: set DATABASE_URL to
    PostgreSQL), the gateway balancing calls over them; state names them core, core-2, ...

    `tls`: make the certificates in $CONSTELLATION_HOME/certs if they are missing (or renew those that expire
    soon) and run everything with TLS; CONSTELLATION_TLS_DIR names a folder of certificates made beforehand."""
    env = dict(os.environ if env is None else env)
    paths = MeshPaths(config.home_dir(env))
    existing = read_state(paths)
    if existing and any(_alive(p["pid"]) for p in existing["processes"].values()):
        raise RuntimeError(
            f"a mesh is already running from {paths.home} (see `constellation status`); stop it with "
            "`constellation down`"
        )
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.state.parent.mkdir(parents=True, exist_ok=True)
    paths.state.parent.chmod(0o700)  # it holds Envoy's admin socket
    tls_dir = _tls_setup(env, paths, tls)
    state: dict = {
        "home": str(paths.home),
        "tls_dir": str(tls_dir) if tls_dir else "",
        "processes": {},
        "auth": ensure_credentials(env, paths.home),
    }
    started: list[subprocess.Popen] = []
    try:
        addresses = _replica_addresses(env, replicas)  # every service reaches each service's replicas
        waits = []
        for service in SERVICES:
            for i, address in enumerate(addresses[service].split(",")):
                name = service if i == 0 else f"{service}-{i + 1}"
                replica_env = dict(env)
                if i:  # the first replica keeps the configured ports; the others get free ones
                    replica_env[f"CONSTELLATION_{service.upper()}_PORT"] = address.rsplit(":", 1)[1]
                    replica_env[f"CONSTELLATION_{service.upper()}_METRICS_PORT"] = "0"
                log_path = paths.logs / f"{name}.log"
                with open(log_path, "ab") as log:
                    process = subprocess.Popen(
                        [sys.executable, "-m", f"{service}_svc"],
                        env=replica_env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                started.append(process)
                waits.append((name, address, process, log_path))
                state["processes"][name] = {"pid": process.pid, "address": address, "log": str(log_path)}
        for name, address, process, log_path in waits:
            try:
                _wait_serving(address, process, log_path, timeout_s, tls_dir)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{name} did not start at {address}: {error}") from None
        gateway_settings = GatewaySettings.from_env(env)
        if gateway_settings.admin_port:
            warnings.warn(
                "CONSTELLATION_GATEWAY_ADMIN_PORT is deprecated and ignored: Envoy's admin interface is the "
                f"Unix socket {admin.SOCKET_NAME} in {paths.state.parent}",
                FutureWarning,  # shown to whoever runs `constellation up`
                stacklevel=2,
            )
        # Gateway limits may not let through more than a service takes.
        gateway_settings = gateway_settings.model_copy(
            update={"max_request_mb": min(gateway_settings.max_request_mb, config.load("core", env).max_message_mb)}
        )
        gateway_port, admin_socket = gateway_settings.port, admin.socket_path(paths.state.parent)
        admin_socket.unlink(missing_ok=True)  # a stale one from a gateway that died stops Envoy's bind
        envoy_config = paths.state.parent / "envoy.yaml"
        envoy_config.write_text(gateway.render_config(gateway_port, admin_socket, addresses, gateway_settings))
        envoy_log = paths.logs / "envoy.log"
        envoy = gateway.start_envoy(envoy_config, envoy_log, env)
        started.append(envoy)
        state["processes"]["gateway"] = {
            "pid": envoy.pid,
            "address": f"127.0.0.1:{gateway_port}",
            "log": str(envoy_log),
            "admin_socket": str(admin_socket),
        }
        try:
            gateway.wait_ready(admin_socket, timeout_s, envoy)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"envoy did not start: {error}; log tail:\n{_tail(envoy_log)}") from None
    except BaseException:
        for process in started:
            _stop_pid(process.pid, 5.0)
        raise
    paths.state.write_text(json.dumps(state, indent=2))
    return state


def ensure_credentials(env: dict[str, str], home: Path) -> dict:
    """Make the generated credentials when the mesh needs them (authentication on, no key configured). Returns how
    the mesh authenticates: mode `generated` (with `admin_key_file` and whether `up` just `created` it),
    `configured` or `off`."""
    settings = config.Settings.from_env(env)
    if settings.auth == "off":
        return {"mode": "off"}
    if settings.configured_api_keys:
        return {"mode": "configured"}
    try:
        _, created = credentials.ensure(home)
    except credentials.CredentialError as error:
        raise RuntimeError(str(error)) from None
    return {"mode": "generated", "admin_key_file": str(credentials.admin_key_path(home)), "created": created}


def console_url(state: dict) -> str:
    """The web console of a running mesh: https when it runs with TLS."""
    return f"{'https' if tls_dir_of(state) else 'http'}://{state['processes']['gateway']['address']}/"


def login_link(env: dict[str, str] | None = None, console: str = "") -> str:
    """A fresh one-time link that logs a browser into the local mesh's console (`?login=<token>`). `console`: the
    console's URL when `up` did not start the mesh (compose's gateway container: its home holds the tokens)."""
    env = dict(os.environ if env is None else env)
    paths = MeshPaths(config.home_dir(env))
    if not console:
        state = read_state(paths)
        if not state:
            raise RuntimeError(
                f"no mesh runs from {paths.home}; start one with `constellation up` (or give --console URL)"
            )
        console = console_url(state)
    elif not console.startswith(("http://", "https://")):
        raise RuntimeError(f"--console {console!r}: give the console's URL, e.g. https://127.0.0.1:8080/")
    try:
        settings = GatewaySettings.load(env)
    except config.ConfigError as error:
        raise RuntimeError(str(error)) from None
    if settings.auth == "off":
        raise RuntimeError(f"authentication is off (CONSTELLATION_AUTH=off): the console needs no login, {console}")
    if not settings.generated_admin_key:
        raise RuntimeError(f"this mesh uses the keys in CONSTELLATION_API_KEYS: open {console} and type one")
    return f"{console}?login={credentials.issue_login_token(paths.home, settings.login_ttl_s)}"


def announce_credentials(state: dict, env: dict[str, str] | None = None) -> list[str]:
    """What `up` and the demo tell the user about credentials: the admin key once (only when `up` made it), where
    it is kept, and a one-time console login link."""
    auth = state.get("auth", {})
    console = console_url(state)
    if auth.get("mode") == "off":
        return [
            "WARNING: authentication is off (CONSTELLATION_AUTH=off): anyone who can reach the ports may call "
            "every method",
            f"console: {console}",
        ]
    if auth.get("mode") == "configured":
        return [f"console: {console}   (type one of the keys in CONSTELLATION_API_KEYS)"]
    if auth.get("mode") != "generated":  # a mesh started before credentials were generated
        return [f"console: {console}"]
    key_file = Path(auth["admin_key_file"])
    if auth.get("created"):
        lines = [
            f"admin API key (shown this once; kept in {key_file}, mode 0600): {credentials.read_key(key_file)}",
        ]
    else:
        lines = [f"admin API key: in {key_file} (the CLI and SDK read it from there)"]
    ttl_h = GatewaySettings.from_env(env).login_ttl_s / 3600
    lines.append(
        f"console: {login_link(env)}   (logs one browser in, once, within {ttl_h:g} h; "
        "`constellation login-link` makes another)"
    )
    return lines


def _stop_pid(pid: int, grace_s: float) -> bool:
    """SIGTERM, wait up to grace_s, then SIGKILL. True if it stopped on SIGTERM."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return False


def down(env: dict[str, str] | None = None, grace_s: float = 15.0) -> list[str]:
    """Stop every process of the mesh (gateway first). Returns what was stopped."""
    paths = MeshPaths(config.home_dir(dict(os.environ if env is None else env)))
    state = read_state(paths)
    if not state:
        return []
    stopped = []
    order = {name: i for i, name in enumerate(("gateway", *reversed(SERVICES)))}
    for name in sorted(state["processes"], key=lambda n: (order.get(n.split("-")[0], len(order)), n)):
        entry = state["processes"][name]
        if name == "hosting" and entry:
            stopped += _stop_model_endpoints(entry["address"], entry["pid"], env, tls_dir_of(state))
        if entry and _alive(entry["pid"]):
            clean = _stop_pid(entry["pid"], grace_s)
            stopped.append(name if clean else f"{name} (killed)")
    paths.state.unlink()
    stopped += _stop_run_workers(paths.home, grace_s)
    return stopped


def _stop_run_workers(home: Path, grace_s: float) -> list[str]:
    """The orchestrator's per-run worker processes live in their own sessions (so they survive an
    orchestrator restart); `down` ends this mesh's, found by their CONSTELLATION_HOME."""
    stopped = []
    wanted = f"CONSTELLATION_HOME={home}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"orchestrator_svc.worker" in (proc / "cmdline").read_bytes() and wanted in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                _stop_pid(int(proc.name), grace_s)
                stopped.append(f"run worker pid {proc.name}")
        except OSError:
            continue  # it ended meanwhile, or is not ours to read
    return stopped


def _stop_model_endpoints(
    address: str, pid: int, env: dict[str, str] | None, tls_dir: Path | None, timeout_s: float = 120.0
) -> list[str]:
    """Ask hosting to stop the model endpoints it started: they outlive a hosting restart on purpose, so
    stopping hosting alone would leave them running."""
    if not _alive(pid):
        return ["hosting was not running: any model endpoint it started still runs (`constellation up` adopts them)"]
    try:
        settings = config.load("hosting", dict(os.environ if env is None else env))
    except config.ConfigError as error:
        return [f"model endpoints not stopped: {error}"]
    try:
        with Client(address, api_key=settings.service_key, tls_dir=tls_dir) as client:
            reply = client.hosting.StopDeployments(hosting_pb2.StopDeploymentsRequest(), timeout=timeout_s)
    except grpc.RpcError as error:
        return [f"model endpoints not stopped: hosting answered {error.code().name}: {error.details()}"]
    stopped = [f"model endpoints of {m.model_name}:{m.model_version}" for m in reply.stopped]
    if reply.other_replicas_stopped:
        stopped.append(f"{reply.other_replicas_stopped} other model replica(s)")
    return stopped


def status(env: dict[str, str] | None = None) -> dict[str, dict]:
    """For each part: pid, address, whether the process lives and whether it answers SERVING."""
    paths = MeshPaths(config.home_dir(dict(os.environ if env is None else env)))
    state = read_state(paths)
    if not state:
        return {}
    report = {}
    for name, entry in state["processes"].items():
        alive = _alive(entry["pid"])
        serving = False
        if alive:
            with Client(entry["address"], tls_dir=tls_dir_of(state)) as client:
                serving = client.serving(timeout_s=2.0)
        report[name] = {**entry, "running": alive, "serving": serving}
    return report
