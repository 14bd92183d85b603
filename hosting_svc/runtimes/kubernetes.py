"""Kubernetes: a deployment is one KServe InferenceService (or a plain Deployment and Service) per model and
environment, on the cluster hosting runs in.

The objects are built with the official client's models and sent through its APIs; nothing here shells
out to kubectl. One object serves a model name in an environment, and annotations say which version owns
it, so the Deployer's rollout maps onto four transitions:

    none            -> create    (start of the first version)
    same version    -> scale     (start again: new min/max replicas)
    other version   -> canary    (start of a new version: KServe's canaryTrafficPercent, or a rolling
                                  update of a plain Deployment; the previous predictor is kept in an annotation)
    canary healthy  -> promote   (stop of the previous version, as the Deployer retires it)
    canary failed   -> rollback  (stop of the new version: the previous predictor is put back)
    last version    -> delete    (stop of the only version)

The cluster scales the replicas (an HPA on CPU; GPU models keep a fixed count, the HPA cannot see GPUs),
so a start makes one Replica whose address is the predictor's Service. KServe's status maps to our states
through TRANSITION_STATES (the CRD's modelStatus.transitionStatus enum); a plain Deployment's through its
conditions. Model pods run as uid 10001 with no service-account token, no privilege escalation and every
capability dropped; the NetworkPolicies in deploy/kubernetes keep them off the network but for hosting and
the orchestrator.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from hosting_svc import packaging
from hosting_svc.domain import HostedModel
from hosting_svc.runtimes import LogLine, Replica, StateChange
from hosting_svc.settings import HostingSettings
from mesh.config import ConfigError
from mesh.errors import FailedPrecondition

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
DEPLOYMENT_MODE = {"serving.kserve.io/deploymentMode": "Standard"}
# KServe routes gRPC to the predictor port named h2c (HTTP/2 without TLS).
PORT_NAME = "h2c"
CONTAINER_NAME = "kserve-container"
MANAGED_BY = {"app.kubernetes.io/managed-by": "constellation-hosting"}
LABEL_NAME = "constellation.io/deployment"
ANNOTATION_MODEL = "constellation.io/model-id"
ANNOTATION_VERSION = "constellation.io/model-version"
ANNOTATION_PREVIOUS = "constellation.io/previous-model-id"
ANNOTATION_PREVIOUS_VERSION = "constellation.io/previous-model-version"
ANNOTATION_PREVIOUS_SPEC = "constellation.io/previous-spec"
PREVIOUS = (ANNOTATION_PREVIOUS, ANNOTATION_PREVIOUS_VERSION, ANNOTATION_PREVIOUS_SPEC)
MODEL_UID = 10001
MAX_NAME = 45  # KServe appends -predictor and more to the InferenceService's name; Services stop at 63

# KServe's status.modelStatus.transitionStatus -> our state (Ready decides between healthy and unhealthy).
TRANSITION_STATES = {
    "": "deploying",
    "InProgress": "deploying",
    "UpToDate": "healthy",
    "BlockedByFailedLoad": "failed",
    "InvalidSpec": "failed",
}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)$", re.IGNORECASE)


def resource_name(model: HostedModel) -> str:
    """The object's name: the model's name and environment as a DNS label, short enough for KServe's suffixes."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"{model.name}-{model.environment or 'default'}".lower()).strip("-")
    if len(base) <= MAX_NAME:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: MAX_NAME - 9].rstrip('-')}-{digest}"


def kubernetes_memory(text: str) -> str:
    """A manifest's memory (512m, 2g: binary units as Docker reads them) as a Kubernetes quantity."""
    match = _MEMORY.match(text.strip())
    if not match:
        raise ValueError(f"memory {text!r}: expected a number with k, m or g")
    number, unit = match.groups()
    return f"{number}{ {'k': 'Ki', 'm': 'Mi', 'g': 'Gi', '': ''}[unit.lower()] }"


def _resources(model: HostedModel) -> client.V1ResourceRequirements:
    wanted = model.manifest.get("resources", {}) or {}
    requests = {"cpu": str(wanted.get("cpu", 1))}
    if wanted.get("memory"):
        requests["memory"] = kubernetes_memory(str(wanted["memory"]))
    limits = dict(requests)
    if wanted.get("gpu"):
        limits["nvidia.com/gpu"] = str(wanted["gpu"])
    return client.V1ResourceRequirements(requests=requests, limits=limits)


def predictor_container(model: HostedModel) -> client.V1Container:
    """Our image as a KServe custom predictor: the V2 gRPC server on the port named h2c, probed by gRPC health."""
    port = packaging.MODEL_PORT
    return client.V1Container(
        name=CONTAINER_NAME,
        image=model.image,
        args=["python", "-m", "model_runtime", "--model-dir", "/opt/model", "--host", "0.0.0.0", "--port", str(port)],
        ports=[client.V1ContainerPort(name=PORT_NAME, container_port=port, protocol="TCP")],
        resources=_resources(model),
        readiness_probe=client.V1Probe(grpc=client.V1GRPCAction(port=port), period_seconds=2, failure_threshold=3),
        liveness_probe=client.V1Probe(
            grpc=client.V1GRPCAction(port=port), initial_delay_seconds=10, period_seconds=10, failure_threshold=6
        ),
        security_context=client.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=MODEL_UID,
            allow_privilege_escalation=False,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )


def replica_bounds(model: HostedModel, settings: HostingSettings) -> tuple[int, int]:
    """(min, max) replicas: the deployment's count, up to max_replicas times it for CPU models; GPU models fixed."""
    low = max(model.replicas, 1)
    if (model.manifest.get("resources", {}) or {}).get("gpu"):
        return low, low
    return low, min(low * settings.kubernetes_max_replicas, 64)


def _serialize(obj: Any) -> Any:
    return ApiClient().sanitize_for_serialization(obj)


def _metadata(model: HostedModel, settings: HostingSettings, annotations: dict[str, str]) -> dict:
    return {
        "name": resource_name(model),
        "namespace": settings.kubernetes_namespace,
        "labels": {**MANAGED_BY, LABEL_NAME: resource_name(model)},
        "annotations": {ANNOTATION_MODEL: model.id, ANNOTATION_VERSION: model.version, **annotations},
    }


def _previous_annotations(previous: dict | None) -> dict[str, str]:
    """The version a canary or rolling update replaces, kept on the object so a rollback can put it back."""
    if not previous:
        return {}
    return {
        ANNOTATION_PREVIOUS: previous["model_id"],
        ANNOTATION_PREVIOUS_VERSION: previous["version"],
        ANNOTATION_PREVIOUS_SPEC: json.dumps(previous["spec"], sort_keys=True),
    }


def predictor_spec(model: HostedModel, settings: HostingSettings) -> dict:
    """spec.predictor of the model's InferenceService (without canaryTrafficPercent)."""
    low, high = replica_bounds(model, settings)
    predictor: dict[str, Any] = {
        "minReplicas": low,
        "maxReplicas": high,
        "serviceAccountName": settings.kubernetes_service_account,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": MODEL_UID, "fsGroup": MODEL_UID},
        "labels": {LABEL_NAME: resource_name(model), ANNOTATION_MODEL: model.id},
        "containers": [_serialize(predictor_container(model))],
    }
    if high > low:
        predictor.update(scaleMetric="cpu", scaleMetricType="Utilization", scaleTarget=settings.kubernetes_cpu_target)
    return predictor


def inference_service(
    model: HostedModel, settings: HostingSettings, canary_percent: int | None = None, previous: dict | None = None
) -> dict:
    """The InferenceService for `model`; with `previous` ({"model_id", "spec"}), a canary beside that predictor."""
    annotations = dict(DEPLOYMENT_MODE)
    annotations.update(_previous_annotations(previous))
    predictor = predictor_spec(model, settings)
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": _metadata(model, settings, annotations),
        "spec": {"predictor": predictor},
    }


def plain_objects(model: HostedModel, settings: HostingSettings, previous: dict | None = None) -> dict[str, Any]:
    """A Deployment, its Service and (CPU models) an HPA: the same predictor without KServe."""
    name = resource_name(model)
    meta = _metadata(model, settings, _previous_annotations(previous))
    selector = {LABEL_NAME: name}
    low, high = replica_bounds(model, settings)
    pod = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels={**selector, ANNOTATION_MODEL: model.id}),
        spec=client.V1PodSpec(
            containers=[predictor_container(model)],
            service_account_name=settings.kubernetes_service_account,
            automount_service_account_token=False,
            security_context=client.V1PodSecurityContext(run_as_non_root=True, run_as_user=MODEL_UID),
        ),
    )
    objects: dict[str, Any] = {
        "deployment": client.V1Deployment(
            api_version="apps/v1",
            kind="Deployment",
            metadata=client.V1ObjectMeta(**meta),
            spec=client.V1DeploymentSpec(
                replicas=low,
                selector=client.V1LabelSelector(match_labels=selector),
                template=pod,
                # A new version's pods must be ready before an old one goes: the rollout keeps serving.
                strategy=client.V1DeploymentStrategy(
                    type="RollingUpdate",
                    rolling_update=client.V1RollingUpdateDeployment(max_surge=1, max_unavailable=0),
                ),
                progress_deadline_seconds=600,
            ),
        ),
        "service": client.V1Service(
            api_version="v1",
            kind="Service",
            metadata=client.V1ObjectMeta(name=name, namespace=meta["namespace"], labels=meta["labels"]),
            spec=client.V1ServiceSpec(
                selector=selector,
                ports=[
                    client.V1ServicePort(
                        name=PORT_NAME,
                        port=packaging.MODEL_PORT,
                        target_port=PORT_NAME,
                        app_protocol="kubernetes.io/h2c",
                    )
                ],
            ),
        ),
    }
    if high > low:
        objects["autoscaler"] = client.V2HorizontalPodAutoscaler(
            api_version="autoscaling/v2",
            kind="HorizontalPodAutoscaler",
            metadata=client.V1ObjectMeta(name=name, namespace=meta["namespace"], labels=meta["labels"]),
            spec=client.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=client.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name=name
                ),
                min_replicas=low,
                max_replicas=high,
                metrics=[
                    client.V2MetricSpec(
                        type="Resource",
                        resource=client.V2ResourceMetricSource(
                            name="cpu",
                            target=client.V2MetricTarget(
                                type="Utilization", average_utilization=settings.kubernetes_cpu_target
                            ),
                        ),
                    )
                ],
            ),
        )
    return objects


def state_of(obj: dict | None) -> tuple[str, str]:
    """(our state, why) from an InferenceService's or a Deployment's status; ("deleted", ...) when it is gone."""
    if obj is None:
        return "deleted", "the object is gone from the cluster"
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if obj.get("kind") == "Deployment":
        progressing = conditions.get("Progressing", {})
        if progressing.get("status") == "False":
            return "failed", progressing.get("message", "the rollout stopped progressing")
        available = conditions.get("Available", {})
        updated = status.get("updatedReplicas", 0) >= (obj.get("spec") or {}).get("replicas", 1)
        if available.get("status") == "True" and updated:
            return "healthy", ""
        return "deploying", available.get("message", "waiting for replicas")
    model_status = status.get("modelStatus") or {}
    state = TRANSITION_STATES.get(model_status.get("transitionStatus", ""), "deploying")  # a newer KServe's value
    ready = conditions.get("Ready", {})
    if state == "failed":
        failure = model_status.get("lastFailureInfo") or {}
        return "failed", failure.get("message") or failure.get("reason") or model_status["transitionStatus"]
    if state == "healthy" and ready.get("status") != "True":
        return ("unhealthy" if ready else "deploying"), ready.get("message", "not ready")
    return state, "" if state == "healthy" else ready.get("message", "waiting for KServe")


def _not_found(error: ApiException) -> bool:
    return error.status == 404


class KubernetesRuntime:
    name = "kubernetes"
    scales_itself = True  # one start per deployment: the cluster runs and scales the replicas

    def __init__(self, settings: HostingSettings, api_client: ApiClient) -> None:
        self.settings = settings
        self.kserve = settings.kubernetes == "kserve"
        self.namespace = settings.kubernetes_namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)

    # The transitions (what each sends is what docs/kubernetes.md says).

    def apply(self, model: HostedModel) -> str:
        """Create, scale or canary the model's object; returns which of the three it did."""
        current = self._get(resource_name(model))
        if current is None:
            self._create(model)
            return "create"
        annotations = current["metadata"].get("annotations") or {}
        if annotations.get(ANNOTATION_MODEL) == model.id:
            previous = self._previous(annotations)
            canary = (current["spec"].get("predictor") or {}).get("canaryTrafficPercent") if self.kserve else None
            self._replace(model, current, previous, canary)
            return "scale"
        previous = {
            "model_id": annotations.get(ANNOTATION_MODEL, ""),
            "version": annotations.get(ANNOTATION_VERSION, ""),
            "spec": self._spec_of(current),
        }
        percent = self.settings.kubernetes_canary_percent
        self._replace(model, current, previous, percent if self.kserve and percent < 100 else None)
        return "canary"

    def promote(self, name: str) -> None:
        """The canary (the current owner) takes all traffic; the previous predictor is forgotten."""
        current = self._get(name)
        if current is not None:
            annotations = current["metadata"].get("annotations") or {}
            owner = (annotations.get(ANNOTATION_MODEL, ""), annotations.get(ANNOTATION_VERSION, ""))
            self._put(current, self._body_from_spec(current, self._spec_of(current), *owner))

    def rollback(self, name: str) -> bool:
        """Put the previous version's predictor back; False when there is none to go back to."""
        current = self._get(name)
        previous = self._previous((current or {}).get("metadata", {}).get("annotations") or {})
        if current is None or previous is None:
            return False
        self._put(current, self._body_from_spec(current, previous["spec"], previous["model_id"], previous["version"]))
        return True

    def delete(self, name: str) -> None:
        try:
            if self.kserve:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            else:
                self.apps.delete_namespaced_deployment(name, self.namespace)
                self.core.delete_namespaced_service(name, self.namespace)
                self._delete_autoscaler(name)
        except ApiException as error:
            if not _not_found(error):
                raise

    # The Runtime interface.

    def build(self, model: HostedModel, wheelhouse: Path, change: StateChange, log: LogLine) -> str:
        raise FailedPrecondition("Kubernetes deploys packaged images; package with Docker and push to a registry")

    def prepare(self, model: HostedModel, log: LogLine) -> None:
        if not model.image:
            raise FailedPrecondition(f"{model.name}:{model.version} has no image; package it with Docker first")

    def start(self, model: HostedModel, index: int, port: int) -> Replica:
        self.apply(model)
        return self._replica(model)

    def resolve(self, model: HostedModel, replica: Replica) -> list[Replica]:
        return [replica]

    def start_trial(self, model: HostedModel, port: int) -> Replica:
        raise FailedPrecondition("smoke tests run on Docker or the local runtime, not on the cluster")

    def alive(self, model: HostedModel, replica_id: str) -> bool:
        return state_of(self._get(resource_name(model)))[0] not in ("failed", "deleted")

    def why_down(self, model: HostedModel, replica_id: str) -> str:
        return state_of(self._get(resource_name(model)))[1]

    def stop(self, model: HostedModel, replica_id: str) -> None:
        """Stopping the previous version promotes the canary; stopping the owner rolls back to the previous
        version, or deletes the object when there is none. The object's name comes from the replica id, so an
        orphan (a model hosting no longer knows) is found too."""
        name = replica_id.partition("/")[2] or resource_name(model)
        current = self._get(name)
        if current is None:
            return
        annotations = current["metadata"].get("annotations") or {}
        if annotations.get(ANNOTATION_PREVIOUS) == model.id:
            self.promote(name)
        elif annotations.get(ANNOTATION_MODEL) == model.id and not self.rollback(name):
            self.delete(name)

    def logs(self, model: HostedModel, replica_id: str) -> str:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_NAME}={resource_name(model)}")
        for pod in pods.items:
            try:
                return str(
                    self.core.read_namespaced_pod_log(
                        pod.metadata.name, self.namespace, container=CONTAINER_NAME, tail_lines=200
                    )
                )
            except ApiException:
                continue
        return ""

    def running(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        if self.kserve:
            items = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, label_selector=selector
            )["items"]
        else:
            items = [
                _serialize(d)
                for d in self.apps.list_namespaced_deployment(self.namespace, label_selector=selector).items
            ]
        for item in items:
            annotations = item["metadata"].get("annotations") or {}
            replica_id = f"{self.namespace}/{item['metadata']['name']}"
            for key in (ANNOTATION_MODEL, ANNOTATION_PREVIOUS):
                if annotations.get(key):
                    found.setdefault(annotations[key], []).append(replica_id)
        return found

    def discard_trials(self, model_id: str = "") -> None:
        """The cluster runs no smoke tests."""

    def remove(self, model: HostedModel) -> None:
        """Images live in the registry; the object goes when the model's last version stops."""
        self.stop(model, self._replica_id(model))

    # Reading and writing the objects.

    def _replica_id(self, model: HostedModel) -> str:
        return f"{self.namespace}/{resource_name(model)}"

    def _replica(self, model: HostedModel) -> Replica:
        service = f"{resource_name(model)}-predictor" if self.kserve else resource_name(model)
        return Replica(self._replica_id(model), f"{service}.{self.namespace}.svc:{packaging.MODEL_PORT}")

    def _get(self, name: str) -> dict | None:
        try:
            if self.kserve:
                return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            return _serialize(self.apps.read_namespaced_deployment(name, self.namespace))
        except ApiException as error:
            if _not_found(error):
                return None
            raise

    @staticmethod
    def _previous(annotations: dict) -> dict | None:
        if not annotations.get(ANNOTATION_PREVIOUS):
            return None
        return {
            "model_id": annotations[ANNOTATION_PREVIOUS],
            "version": annotations.get(ANNOTATION_PREVIOUS_VERSION, ""),
            "spec": json.loads(annotations[ANNOTATION_PREVIOUS_SPEC]),
        }

    def _spec_of(self, current: dict) -> dict:
        if self.kserve:
            predictor = dict(current["spec"]["predictor"])
            predictor.pop("canaryTrafficPercent", None)
            return predictor
        return current["spec"]["template"]

    def _create(self, model: HostedModel) -> None:
        if self.kserve:
            body = inference_service(model, self.settings)
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
            return
        objects = plain_objects(model, self.settings)
        self.apps.create_namespaced_deployment(self.namespace, objects["deployment"])
        self.core.create_namespaced_service(self.namespace, objects["service"])
        if "autoscaler" in objects:
            self.autoscaling.create_namespaced_horizontal_pod_autoscaler(self.namespace, objects["autoscaler"])

    def _replace(self, model: HostedModel, current: dict, previous: dict | None, canary: int | None) -> None:
        if self.kserve:
            self._put(current, inference_service(model, self.settings, canary, previous))
            return
        objects = plain_objects(model, self.settings, previous)
        self._put(current, _serialize(objects["deployment"]))
        name = resource_name(model)
        self._delete_autoscaler(name)
        if "autoscaler" in objects:
            self.autoscaling.create_namespaced_horizontal_pod_autoscaler(self.namespace, objects["autoscaler"])

    def _body_from_spec(self, current: dict, spec: dict, owner: str, version: str) -> dict:
        """`current` with `spec` as its predictor (KServe) or pod template (Deployment), owned by `owner`
        alone (no canary, no previous version)."""
        annotations = {k: v for k, v in (current["metadata"].get("annotations") or {}).items() if k not in PREVIOUS}
        annotations.update({ANNOTATION_MODEL: owner, ANNOTATION_VERSION: version})
        metadata = {
            "name": current["metadata"]["name"],
            "namespace": self.namespace,
            "labels": current["metadata"].get("labels") or {},
            "annotations": annotations,
        }
        if self.kserve:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "spec": {"predictor": spec}}
        else:
            body = {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {**current["spec"], "template": spec}}
        return {**body, "metadata": metadata}

    def _put(self, current: dict, body: dict) -> None:
        """Replace the object, guarded by the resourceVersion read (a concurrent change fails with 409)."""
        body["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
        name = current["metadata"]["name"]
        if self.kserve:
            self.custom.replace_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, body)
        else:
            self.apps.replace_namespaced_deployment(name, self.namespace, body)

    def _delete_autoscaler(self, name: str) -> None:
        try:
            self.autoscaling.delete_namespaced_horizontal_pod_autoscaler(name, self.namespace)
        except ApiException as error:
            if not _not_found(error):
                raise


def api_client(settings: HostingSettings) -> ApiClient | None:
    """A client for the cluster hosting runs in (its service account), or kubeconfig's outside one; None when
    the kubernetes runtime is off. Raises ConfigError when neither is there."""
    if settings.kubernetes == "off":
        return None
    from kubernetes import config as kube_config

    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        try:
            kube_config.load_kube_config()
        except (kube_config.ConfigException, OSError) as error:
            raise ConfigError(
                f"CONSTELLATION_HOSTING_KUBERNETES={settings.kubernetes} needs a cluster: no in-cluster service "
                f"account and no usable kubeconfig ({error})"
            ) from None
    return ApiClient()
