"""Hosting's domain: package, deploy, watch, delete, reconcile.

Long work (builds, smoke tests, rollouts) runs on background threads; every
state change is persisted as an event before anyone sees it (see domain.py for
the state machine). A monitor thread checks each deployed replica's gRPC
health every second: a replica that stops answering turns the model
UNHEALTHY, its recovery turns it HEALTHY again, and a local process that died
is restarted (Docker's restart policy does that for containers).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hosting_svc import images, packaging
from hosting_svc.domain import IN_PROGRESS, RUNTIMES, DeploymentEvent, Endpoint, HostedModel
from hosting_svc.runtimes import Replica, Runtime, free_port
from hosting_svc.sources import Source, fetch
from hosting_svc.store import Store
from inference import grpc_predict_v2_pb2 as v2
from inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from mesh.ids import new_id
from model_runtime.manifest import NAME, NUMPY_DTYPES, VERSION, ManifestError, load_manifest

log = logging.getLogger("hosting")

CHANNEL_OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


@dataclass(frozen=True)
class HostingSettings:
    home: Path
    base_image: str = "constellation/base:bookworm"
    ready_timeout_s: float = 60.0
    monitor_interval_s: float = 1.0


def _now() -> datetime:
    return datetime.now(UTC)


def wait_model_ready(address: str, name: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Until the endpoint says ModelReady; raises TimeoutError or RuntimeError (process gone)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.ModelReady(v2.ModelReadyRequest(name=name), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            if not alive():
                raise RuntimeError("the model server exited")
            time.sleep(0.1)
    raise TimeoutError(f"not ready after {timeout_s:.0f}s")


def smoke_test(address: str, folder: Path, manifest) -> list[str]:  # type: ignore[no-untyped-def]
    """One real inference with the example input; returns what does not match the manifest."""
    if manifest.example_input:
        tiles = np.load(folder / manifest.example_input).astype(NUMPY_DTYPES[manifest.dtype], copy=False)
    else:
        size = manifest.tile_size_px or 64
        tiles = np.zeros((1, len(manifest.bands), size, size), dtype=NUMPY_DTYPES[manifest.dtype])
    request = v2.ModelInferRequest(
        model_name=manifest.name,
        inputs=[v2.ModelInferRequest.InferInputTensor(name="tiles", datatype=manifest.dtype, shape=tiles.shape)],
        raw_input_contents=[np.ascontiguousarray(tiles).tobytes()],
    )
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        response = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    problems = []
    got = {o.name: o for o in response.outputs}
    for spec in manifest.outputs:
        out = got.get(spec.name)
        if out is None:
            problems.append(f"output {spec.name!r} is missing")
            continue
        if out.datatype != spec.dtype:
            problems.append(f"output {spec.name!r} is {out.datatype}, the manifest says {spec.dtype}")
        shape = list(out.shape)
        expected = [tiles.shape[0], *spec.shape]
        if len(shape) != len(expected) or any(e not in (-1, s) for e, s in zip(expected, shape, strict=False)):
            problems.append(f"output {spec.name!r} has shape {shape}, the manifest says {expected}")
    return problems


class Hosting:
    def __init__(self, store: Store, settings: HostingSettings, engine: images.Engine | None, runtimes: dict[str, Runtime]) -> None:
        self.store = store
        self.settings = settings
        self.engine = engine
        self.runtimes = runtimes
        self.stopping = threading.Event()
        self._locks: dict[str, threading.Lock] = {}
        self._replicas: dict[str, list[Replica]] = {}  # model id -> live replicas (runtime ids)

    # Events

    def _emit(self, model: HostedModel, state: str | None = None, message: str = "", log_line: str = "") -> DeploymentEvent:
        if state is not None and state != model.state:
            model.state = state
            model.state_message = message
        model.last_updated = _now()
        self.store.save(model)
        event = self.store.append_event(model, message, log_line)
        log.info("deployment event", extra={"model_id": model.id, "state": model.state, "event_message": message})
        return event

    def _lock(self, model_id: str) -> threading.Lock:
        return self._locks.setdefault(model_id, threading.Lock())

    def note(self, model: HostedModel, message: str) -> None:
        """An event that changes no state (progress of a push, say)."""
        self._emit(model, message=message)

    def export_compose(self, model_ids: list[str]) -> str:
        from hosting_svc import compose

        chosen = [self.get(i) for i in model_ids] if model_ids else [m for m in self.store.all() if m.state in ("healthy", "unhealthy")]
        without_image = [m.id for m in chosen if not m.image]
        if without_image:
            raise FailedPrecondition(f"no image for {', '.join(without_image)}: only Docker-packaged models can be exported")
        if not chosen:
            raise FailedPrecondition("no deployed model to export; deploy one or name model_ids")
        return compose.render(chosen)

    def get(self, model_id: str) -> HostedModel:
        if not model_id:
            raise InvalidArgument.field("model_id", "is required")
        model = self.store.get(model_id)
        if model is None:
            raise NotFound(f"no hosted model has id {model_id!r}")
        return model

    def list(self) -> list[HostedModel]:
        return self.store.all()

    def watch(self, model_id: str, after: int, keep_going: Callable[[], bool]) -> Iterator[DeploymentEvent]:
        self.get(model_id)
        for event in self.store.follow(model_id, after, lambda: keep_going() and not self.stopping.is_set()):
            yield event
            if event.state == "deleted":
                return

    # Packaging

    def default_runtime(self) -> str:
        return "docker" if self.engine is not None else "local"

    def package(self, name: str, version: str, source: Source, card: dict) -> HostedModel:
        violations = []
        if not NAME.match(name):
            violations.append(FieldViolation("model_name", f"{name!r}: lowercase letters, digits, '-' and '_', at most 64"))
        if not VERSION.match(version):
            violations.append(FieldViolation("model_version", f"{version!r}: a version such as 1.0.0 is required"))
        if violations:
            raise InvalidArgument(violations)
        existing = self.store.find(name, version)
        if existing is not None and existing.state in IN_PROGRESS:
            raise FailedPrecondition(f"{name}:{version} is already {existing.state}; watch it or wait")
        model_id = existing.id if existing else new_id("hm")
        staging = self.settings.home / "sources" / f"{model_id}.staging"
        folder = fetch(source, staging)  # raises InvalidArgument / FailedPrecondition: nothing stored yet
        try:
            manifest = load_manifest(folder)
        except ManifestError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise InvalidArgument([FieldViolation(f"constellation.yaml.{p.field}", p.description) for p in error.problems]) from None
        mismatches = [
            FieldViolation(field, f"the request says {asked!r} but constellation.yaml says {declared!r}")
            for field, asked, declared in (("model_name", name, manifest.name), ("model_version", version, manifest.version))
            if asked != declared
        ]
        if mismatches:
            shutil.rmtree(staging, ignore_errors=True)
            raise InvalidArgument(mismatches)
        final = self.settings.home / "sources" / model_id
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        model = existing or HostedModel(id=model_id, name=name, version=version)
        model.source, model.card = source.describe(), card
        model.manifest = {**dataclasses.asdict(manifest), "folder": str(final), "digest": packaging.manifest_digest(final)}
        model.runtime = model.runtime or self.default_runtime()
        model.endpoints, model.image, model.image_digest, model.installed_packages = [], "", "", []
        self._emit(model, "packaging", f"validated constellation.yaml of {name}:{version}")
        threading.Thread(target=self._package, args=(model.id,), name=f"package-{name}", daemon=True).start()
        return model

    def _package(self, model_id: str) -> None:
        with self._lock(model_id):
            model = self.get(model_id)
            try:
                requirements = packaging.requirements_for(list(model.manifest["requirements"]))
                wheelhouse = packaging.download_wheelhouse(requirements, self.settings.home / "wheelhouse", lambda line: self._emit(model, log_line=line))
                model.manifest["wheelhouse"] = str(wheelhouse)
                if self.engine is not None:
                    self._build_image(model, wheelhouse)
                else:
                    self._build_local(model)
                self._emit(model, "ready", f"{model.name}:{model.version} passed its smoke test")
            except packaging.DependencyError as error:
                self._emit(model, "failed", error.summary, log_line="\n".join(error.log_tail[-10:]))
            except images.BuildFailed as error:
                self._emit(model, "failed", f"image build failed: {error}", log_line="\n".join(error.log_tail[-15:]))
            except Exception as error:  # noqa: BLE001 - any failure ends the packaging with its reason
                log.exception("packaging failed")
                self._emit(model, "failed", f"packaging failed: {error}")

    def _build_image(self, model: HostedModel, wheelhouse: Path) -> None:
        assert self.engine is not None
        self.engine.require_image(self.settings.base_image)
        self._emit(model, "building", f"building on {self.settings.base_image} with the network off")
        labels = {
            images.LABEL_MODEL: model.id,
            images.LABEL_NAME: model.name,
            images.LABEL_VERSION: model.version,
            images.LABEL_MANIFEST: model.manifest["digest"],
        }
        context = packaging.prepare_context(Path(model.manifest["folder"]), wheelhouse, self.settings.home / "builds" / model.id, self.settings.base_image, labels)
        tag = f"constellation/{model.name}:{model.version}"
        self.engine.build(context, tag, labels, lambda line: self._emit(model, log_line=line))
        model.image, model.image_digest = tag, self.engine.image_digest(tag)
        model.installed_packages = [p for p in self.engine.read_file(tag, "/opt/installed-packages.txt").split() if "==" in p]
        self._emit(model, "validating", f"built {tag} ({self.engine.image_size(tag) / 1e6:.0f} MB); smoke-testing it")
        port = free_port()
        labels = {**labels, images.LABEL_ROLE: "smoke"}
        container = self.engine.run(tag, f"constellation-smoke-{model.id}", port, labels, {}, restart=False)
        try:
            self._validate(model, f"127.0.0.1:{port}", lambda: self.engine.starting_or_running(container), lambda: self.engine.logs(container))  # type: ignore[union-attr]
        finally:
            self.engine.remove_container(container)

    def _build_local(self, model: HostedModel) -> None:
        runtime = self.runtimes["local"]
        self._emit(model, "building", "no Docker engine: building a venv for the local runtime")
        runtime.prepare(model, lambda line: self._emit(model, log_line=line))
        self._emit(model, "validating", "smoke-testing a local process")
        replica = runtime.start(model, 0, free_port())
        try:
            self._validate(model, replica.address, lambda: runtime.alive(model, replica.replica_id), lambda: runtime.logs(model, replica.replica_id))
        finally:
            runtime.stop(model, replica.replica_id)

    def _validate(self, model: HostedModel, address: str, alive: Callable[[], bool], logs: Callable[[], str]) -> None:
        from model_runtime.manifest import load_manifest as reload

        manifest = reload(Path(model.manifest["folder"]))
        try:
            wait_model_ready(address, model.name, self.settings.ready_timeout_s, alive)
            problems = smoke_test(address, Path(model.manifest["folder"]), manifest)
        except (TimeoutError, RuntimeError, grpc.RpcError) as error:
            detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
            raise RuntimeError(f"smoke test failed: {detail}; log tail:\n{logs()[-2000:]}") from None
        if problems:
            raise RuntimeError("smoke test failed: " + "; ".join(problems))

    # Deploying

    def deploy(self, model_id: str, environment: str, replicas: int, runtime: str) -> HostedModel:
        model = self.get(model_id)
        environment = environment or "default"
        replicas = replicas or 1
        runtime = runtime or model.runtime or self.default_runtime()
        if not re.match(r"^[a-z0-9][a-z0-9-]{0,31}$", environment):
            raise InvalidArgument.field("environment", f"{environment!r}: lowercase letters, digits and '-'")
        if not 1 <= replicas <= 16:
            raise InvalidArgument.field("replicas", "must be between 1 and 16")
        if runtime not in RUNTIMES:
            raise InvalidArgument.field("runtime", f"one of {', '.join(RUNTIMES)}")
        if runtime not in self.runtimes:
            raise FailedPrecondition(self._runtime_unavailable(runtime))
        if model.state in IN_PROGRESS:
            raise FailedPrecondition(f"{model.name}:{model.version} is {model.state}; wait for it to finish")
        if model.state not in ("ready", "healthy", "unhealthy", "failed") or not model.manifest.get("wheelhouse"):
            raise FailedPrecondition(f"{model.name}:{model.version} is {model.state}; package it successfully first")
        if runtime == "docker" and not model.image:
            raise FailedPrecondition(f"{model.name}:{model.version} has no image (it was packaged without Docker); package it again with Docker running")
        model.runtime, model.environment, model.replicas = runtime, environment, replicas
        self._emit(model, "deploying", f"starting {replicas} replica(s) on {runtime} in {environment}")
        threading.Thread(target=self._deploy, args=(model.id,), name=f"deploy-{model.name}", daemon=True).start()
        return model

    def _runtime_unavailable(self, runtime: str) -> str:
        if runtime == "docker":
            return "the Docker engine does not answer here; start dockerd or deploy with the local runtime"
        if runtime == "modal":
            return "the Modal runtime needs MODAL_TOKEN_ID and MODAL_TOKEN_SECRET in hosting's environment"
        return f"runtime {runtime} is not available"

    def _deploy(self, model_id: str) -> None:
        with self._lock(model_id):
            model = self.get(model_id)
            runtime = self.runtimes[model.runtime]
            previous = self._live_sibling(model)
            started: list[Replica] = []
            try:
                self._stop_replicas(model)
                runtime.prepare(model, lambda line: self._emit(model, log_line=line))
                for index in range(model.replicas):
                    started.append(runtime.start(model, index, free_port()))
                for replica in started:
                    wait_model_ready(
                        replica.address, model.name, self.settings.ready_timeout_s,
                        lambda r=replica: runtime.alive(model, r.replica_id),
                    )
            except Exception as error:  # noqa: BLE001 - a failed rollout is stopped and reported
                tail = runtime.logs(model, started[-1].replica_id) if started else ""
                for replica in started:
                    runtime.stop(model, replica.replica_id)
                self._replicas.pop(model.id, None)
                model.endpoints = []
                kept = f"; traffic stays on {previous.name}:{previous.version}" if previous else ""
                self._emit(model, "failed", f"deployment never became healthy: {error}{kept}", log_line=tail[-2000:])
                if previous:
                    self._emit(previous, message=f"{model.name}:{model.version} failed to deploy; {previous.version} keeps serving")
                return
            self._replicas[model.id] = started
            model.endpoints = [Endpoint(r.address, r.replica_id[:12], True) for r in started]
            model.deployed_at = _now()
            self._emit(model, "healthy", f"{len(started)} replica(s) serving: {', '.join(r.address for r in started)}")
            if previous:
                self._retire(previous, f"superseded by {model.version}")

    def _live_sibling(self, model: HostedModel) -> HostedModel | None:
        """Another version of the same model serving in the same environment."""
        for other in self.store.all():
            if other.id != model.id and other.name == model.name and other.environment == model.environment and other.state in ("healthy", "unhealthy"):
                return other
        return None

    def _retire(self, model: HostedModel, reason: str) -> None:
        with self._lock(model.id):
            self._stop_replicas(model)
            model.endpoints = []
            self._emit(model, "ready", f"stopped: {reason}")

    def _stop_replicas(self, model: HostedModel) -> None:
        """Stop the model's replicas on every runtime (a redeploy may switch runtimes)."""
        self._replicas.pop(model.id, None)
        for runtime in self.runtimes.values():
            for replica_id in runtime.running().get(model.id, []):
                runtime.stop(model, replica_id)

    # Deleting

    def delete(self, model_id: str) -> None:
        model = self.get(model_id)
        with self._lock(model_id):
            self._stop_replicas(model)
            if self.engine is not None:
                for container in self.engine.containers(**{images.LABEL_MODEL: model.id}):
                    container.remove(force=True)
                if model.image and not self.engine.remove_image(model.image):
                    log.info("image kept: in use", extra={"image": model.image})
            for runtime in self.runtimes.values():
                runtime.remove(model)
            shutil.rmtree(self.settings.home / "sources" / model.id, ignore_errors=True)
            shutil.rmtree(self.settings.home / "builds" / model.id, ignore_errors=True)
            model.endpoints = []
            self._emit(model, "deleted", f"{model.name}:{model.version} deleted")
            self.store.delete(model.id)

    # Health and restarts

    def start_monitor(self) -> None:
        threading.Thread(target=self._monitor, name="deployment-monitor", daemon=True).start()

    def _monitor(self) -> None:
        while not self.stopping.wait(self.settings.monitor_interval_s):
            for model_id in list(self._replicas):
                try:
                    self._check(model_id)
                except Exception:  # noqa: BLE001 - the monitor must keep watching the others
                    log.exception("health check failed", extra={"model_id": model_id})

    def _check(self, model_id: str) -> None:
        lock = self._lock(model_id)
        if not lock.acquire(blocking=False):
            return  # a rollout or delete holds it
        try:
            model = self.store.get(model_id)
            replicas = self._replicas.get(model_id, [])
            if model is None or model.state not in ("healthy", "unhealthy") or not replicas:
                return
            runtime = self.runtimes[model.runtime]
            health = []
            for i, replica in enumerate(replicas):
                if not runtime.alive(model, replica.replica_id) and model.runtime == "local":
                    port = int(replica.address.rsplit(":", 1)[1])
                    replicas[i] = replica = runtime.start(model, i, port)
                    self._emit(model, log_line=f"replica {i} exited; restarted it on {replica.address}")
                health.append(_serving(replica.address))
            model.endpoints = [Endpoint(r.address, r.replica_id[:12], ok) for r, ok in zip(replicas, health, strict=True)]
            if all(health) and model.state == "unhealthy":
                self._emit(model, "healthy", "every replica answers again")
            elif not all(health) and model.state == "healthy":
                why = getattr(runtime, "why_down", lambda model, replica_id: "")
                down = [r.address + (f" ({why(model, r.replica_id)})" if why(model, r.replica_id) else "") for r, ok in zip(replicas, health, strict=True) if not ok]
                self._emit(model, "unhealthy", f"replica(s) not answering: {', '.join(down)}")
        finally:
            lock.release()

    # Restart recovery

    def reconcile(self) -> None:
        """After a restart: nothing stays in progress, serving replicas are adopted, orphans removed."""
        known = {m.id: m for m in self.store.all()}
        held = {name: runtime.running() for name, runtime in self.runtimes.items()}
        for model in known.values():
            if model.state in ("packaging", "building", "validating"):
                if self.engine is not None:
                    for container in self.engine.containers(**{images.LABEL_MODEL: model.id, images.LABEL_ROLE: "smoke"}):
                        container.remove(force=True)
                self._emit(model, "failed", f"hosting restarted while {model.state}; package the model again")
                continue
            replica_ids = held.get(model.runtime, {}).get(model.id, [])
            if model.state in ("healthy", "unhealthy", "deploying") and replica_ids:
                by_id = {e.replica_id: e.address for e in model.endpoints}
                replicas = [Replica(rid, by_id.get(rid[:12], "")) for rid in replica_ids]
                if model.state == "deploying" or not all(r.address for r in replicas):
                    for replica in replicas:
                        self.runtimes[model.runtime].stop(model, replica.replica_id)
                    model.endpoints = []
                    self._emit(model, "failed", "hosting restarted during the rollout; deploy again")
                    continue
                self._replicas[model.id] = replicas
                self._emit(model, message=f"adopted {len(replicas)} running replica(s) after a hosting restart")
            elif model.state in ("healthy", "unhealthy", "deploying", "pushing"):
                model.endpoints = []
                self._emit(model, "failed", f"hosting restarted while {model.state} and no replica is running; deploy again")
        for name, running in held.items():
            for model_id, replica_ids in running.items():
                owner = known.get(model_id)
                if owner is None or model_id not in self._replicas:
                    for replica_id in replica_ids:
                        self.runtimes[name].stop(owner or HostedModel(id=model_id, name="", version=""), replica_id)
                    log.info("removed orphan replicas", extra={"model_id": model_id, "count": len(replica_ids)})
        if self.engine is not None:
            for container in self.engine.containers(**{images.LABEL_ROLE: "smoke"}):
                container.remove(force=True)

    def close(self) -> None:
        self.stopping.set()


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
