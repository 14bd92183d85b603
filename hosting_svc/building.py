"""Packaging: a model source becomes a validated artifact (an image, or a venv without Docker).

PackageModel checks names and the manifest synchronously (nothing is stored
when they are wrong), then a background thread downloads the wheelhouse,
has the building runtime build the artifact, and smoke-tests it with one real
inference of the example input: PACKAGING -> BUILDING -> VALIDATING -> READY,
or FAILED with the reason and the log tail.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from clients.inference import InferenceClient
from hosting_svc import images, packaging
from hosting_svc.domain import IN_PROGRESS, HostedModel
from hosting_svc.journal import Journal
from hosting_svc.runtimes import Replica, Runtime, free_port
from hosting_svc.settings import HostingSettings
from hosting_svc.sources import Source, fetch
from mesh.errors import FailedPrecondition, FieldViolation, InvalidArgument
from mesh.ids import new_id
from model_runtime.manifest import (
    NAME,
    NUMPY_DTYPES,
    VERSION,
    Manifest,
    ManifestError,
    load_manifest,
)

log = logging.getLogger("hosting")


def smoke_test(client: InferenceClient, folder: Path, manifest: Manifest) -> list[str]:
    """One real inference with the example input; returns what does not match the manifest."""
    if manifest.example_input:
        tiles = np.load(folder / manifest.example_input).astype(NUMPY_DTYPES[manifest.dtype], copy=False)
    else:
        size = manifest.tile_size_px or 64
        tiles = np.zeros((1, len(manifest.bands), size, size), dtype=NUMPY_DTYPES[manifest.dtype])
    response, _ = client.infer_raw(manifest.name, tiles, timeout=60)
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


class Builder:
    def __init__(
        self,
        journal: Journal,
        settings: HostingSettings,
        runtimes: dict[str, Runtime],
        stop_replicas: Callable[[HostedModel], int] = lambda model: 0,
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.runtimes = runtimes
        self.stop_replicas = stop_replicas  # the deployer's: re-packaging stops what serves the old artifact

    @property
    def runtime(self) -> Runtime:
        """The runtime that builds: Docker when an engine answers, local processes otherwise."""
        return self.runtimes["docker"] if "docker" in self.runtimes else self.runtimes["local"]

    def package(self, name: str, version: str, source: Source, card: dict) -> HostedModel:
        violations = []
        if not NAME.match(name):
            violations.append(
                FieldViolation("model_name", f"{name!r}: lowercase letters, digits, '-' and '_', at most 64")
            )
        if not VERSION.match(version):
            violations.append(FieldViolation("model_version", f"{version!r}: a version such as 1.0.0 is required"))
        if violations:
            raise InvalidArgument(violations)
        existing = self.journal.store.find(name, version)
        if existing is not None and existing.state in IN_PROGRESS:
            raise FailedPrecondition(f"{name}:{version} is already {existing.state}; watch it or wait")
        model_id = existing.id if existing else new_id("hm")
        staging = self.settings.home / "sources" / f"{model_id}.staging"
        # raises InvalidArgument / PermissionDenied / FailedPrecondition / Unavailable: nothing stored yet
        folder = fetch(source, staging, self.settings)
        try:
            manifest = load_manifest(folder)
        except ManifestError as error:
            shutil.rmtree(staging, ignore_errors=True)
            problems = [FieldViolation(f"constellation.yaml.{p.field}", p.description) for p in error.problems]
            raise InvalidArgument(problems) from None
        asked_declared = (("model_name", name, manifest.name), ("model_version", version, manifest.version))
        mismatches = [
            FieldViolation(field, f"the request says {asked!r} but constellation.yaml says {declared!r}")
            for field, asked, declared in asked_declared
            if asked != declared
        ]
        if mismatches:
            shutil.rmtree(staging, ignore_errors=True)
            raise InvalidArgument(mismatches)
        stopped = 0
        if existing is not None:  # its replicas serve what is being replaced: stopped, never left behind
            with self.journal.lock(model_id):
                stopped = self.stop_replicas(existing)
        final = self.settings.home / "sources" / model_id
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        model = existing or HostedModel(id=model_id, name=name, version=version)
        model.source, model.card = source.describe(), card
        model.manifest = {
            **dataclasses.asdict(manifest),
            "folder": str(final),
            "digest": packaging.manifest_digest(final),
        }
        model.runtime = model.runtime or self.runtime.name
        model.endpoints, model.image, model.image_digest, model.installed_packages = [], "", "", []
        replaced = f"; stopped its {stopped} running replica(s)" if stopped else ""
        self.journal.emit(model, "packaging", f"validated constellation.yaml of {name}:{version}{replaced}")
        threading.Thread(target=self._package, args=(model.id,), name=f"package-{name}", daemon=True).start()
        return model

    def _package(self, model_id: str) -> None:
        with self.journal.lock(model_id):
            model = self.journal.get(model_id)
            emit = self.journal.emit
            try:
                requirements = packaging.requirements_for(list(model.manifest["requirements"]))
                wheelhouse = packaging.download_wheelhouse(
                    requirements, self.settings.home / "wheelhouse", lambda line: emit(model, log_line=line)
                )
                model.manifest["wheelhouse"] = str(wheelhouse)
                runtime = self.runtime
                validating = runtime.build(
                    model,
                    wheelhouse,
                    lambda state, message: emit(model, state, message),
                    lambda line: emit(model, log_line=line),
                )
                emit(model, "validating", validating)
                self._validate(model, runtime)
                emit(model, "ready", f"{model.name}:{model.version} passed its smoke test")
            except packaging.DependencyError as error:
                emit(model, "failed", error.summary, log_line="\n".join(error.log_tail[-10:]))
            except images.BuildFailed as error:
                emit(model, "failed", f"image build failed: {error}", log_line="\n".join(error.log_tail[-15:]))
            except Exception as error:  # any failure ends the packaging with its reason
                log.exception("packaging failed")
                emit(model, "failed", f"packaging failed: {error}")

    def _validate(self, model: HostedModel, runtime: Runtime) -> None:
        """Start a trial replica, wait for it, infer the example input, stop it; raises RuntimeError with the reason."""
        folder = Path(model.manifest["folder"])
        manifest = load_manifest(folder)
        replica: Replica = runtime.start_trial(model, free_port())
        try:
            with InferenceClient(replica.address, model.name) as client:
                try:
                    client.wait_ready(self.settings.ready_timeout_s, lambda: runtime.alive(model, replica.replica_id))
                    problems = smoke_test(client, folder, manifest)
                except (TimeoutError, RuntimeError, grpc.RpcError) as error:
                    detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
                    why = runtime.why_down(model, replica.replica_id)
                    tail = runtime.logs(model, replica.replica_id)[-2000:]
                    raise RuntimeError(
                        f"smoke test failed: {detail}{f': {why}' if why else ''}; log tail:\n{tail}"
                    ) from None
        finally:
            runtime.stop(model, replica.replica_id)
        if problems:
            raise RuntimeError("smoke test failed: " + "; ".join(problems))

    def remove(self, model: HostedModel) -> None:
        """The model's source copy and build context."""
        shutil.rmtree(self.settings.home / "sources" / model.id, ignore_errors=True)
        shutil.rmtree(self.settings.home / "builds" / model.id, ignore_errors=True)
