"""Kubernetes without a cluster: every manifest the mesh would send, built by the real builders and validated
against the real schemas offline.

- deploy/kubernetes: each overlay rendered by kustomize (kubectl from the venv) and every object validated
  by kubernetes-validate in strict mode for K8S_VERSION.
- hosting's kubernetes runtime: its InferenceServices validated against KServe's CRD (strict: an unknown
  field fails, as with the API server's strict field validation), its plain objects by kubernetes-validate,
  and each transition (create, scale, canary, promote, rollback, delete) sent through the official client
  to an in-memory API server at the HTTP boundary and compared with docs/kubernetes.md.
- the orchestrator's run Jobs built by dagster-k8s from the settings and validated the same way.
No cluster is reachable here, so nothing is applied; the docs say so.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from dagster import DagsterInstance, DagsterRunStatus
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s.job import get_job_name_from_run_id
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTClientObject

from constellation_sdk import manifests
from constellation_sdk.cli import main as cli
from gateway import admin, supervisor
from hosting_svc.domain import HostedModel
from hosting_svc.runtimes import kubernetes as kube
from hosting_svc.settings import HostingSettings
from mesh.config import ConfigError
from orchestrator_svc.instance import instance_config
from orchestrator_svc.k8s_launcher import DAGSTER_HOME, K8sWorkerRunLauncher, launcher_config
from orchestrator_svc.runs import ADOPT, REEXECUTE, SETTLE, takeover
from orchestrator_svc.settings import OrchestratorSettings

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.33.0"  # the oldest Kubernetes release docs/kubernetes.md supports
# KServe's CRD (kserve/kserve, Apache-2.0), in the repository so any clone has it (tests/data/kserve/README.md).
KSERVE_CRD = ROOT / "tests" / "data" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
DOCS = ROOT / "docs" / "kubernetes.md"


# --------------------------------------------------------------------------- deploy/kubernetes


def unreachable_kubeconfig(folder: Path) -> Path:
    """A kubeconfig whose cluster is a closed port: clients load it, and any call to it is refused."""
    path = folder / "kubeconfig"
    cluster = {"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}
    context = {"name": "none", "context": {"cluster": "none", "user": "none"}}
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster], "contexts": [context]}
    path.write_text(
        yaml.safe_dump({**config, "users": [{"name": "none", "user": {"token": "unused"}}], "current-context": "none"})
    )
    return path


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: list(yaml.safe_load_all(manifests.render(overlay))) for overlay in manifests.OVERLAYS}


def _find(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_the_cli_offers_every_overlay_in_deploy_kubernetes() -> None:
    assert sorted(p.name for p in (manifests.DEPLOY / "overlays").iterdir()) == sorted(manifests.OVERLAYS)


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_every_object_of_the_overlay_is_valid_kubernetes(rendered: dict[str, list[dict]], overlay: str) -> None:
    for obj in rendered[overlay]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelled_field_and_a_wrong_type(rendered: dict[str, list[dict]]) -> None:
    deployment = _find(rendered["dev"], "Deployment", "core")
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    misspelled = copy.deepcopy(deployment)
    misspelled["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelled, K8S_VERSION, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_each_service_runs_with_probes_limits_and_least_privilege(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    objects = rendered[overlay]
    ports = {"core": 50051, "hosting": 50052, "orchestrator": 50053, "agent": 50054}
    for name in [*ports, "gateway"]:
        pod = _find(objects, "Deployment", name)["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["readinessProbe"] and container["livenessProbe"], name
        if name in ports:  # gRPC health on the service's port
            assert container["readinessProbe"]["grpc"]["port"] == ports[name]
            assert _find(objects, "Service", name)["spec"]["ports"][0]["port"] == ports[name]
        assert set(container["resources"]) == {"requests", "limits"}, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        tokens = pod["serviceAccountName"] in ("constellation-hosting", "constellation-orchestrator")
        account = _find(objects, "ServiceAccount", pod["serviceAccountName"])
        assert account.get("automountServiceAccountToken", True) is tokens, name
    assert {h["spec"]["scaleTargetRef"]["name"] for h in objects if h["kind"] == "HorizontalPodAutoscaler"} == {
        "core",
        "agent",
    }
    budgets = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in objects
        if p["kind"] == "PodDisruptionBudget"
    }
    assert budgets == {"core", "agent", "gateway", "hosting", "orchestrator"}
    if overlay == "production":  # every part runs twice (hosting and the orchestrator by lease), one always up
        for name in [*ports, "gateway"]:
            deployment = _find(objects, "Deployment", name)["spec"]
            assert deployment["replicas"] >= 2 and deployment.get("strategy", {}).get("type") != "Recreate", name
            assert _find(objects, "PodDisruptionBudget", name)["spec"] == {
                "minAvailable": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            }
    role = _find(objects, "Role", "constellation-hosting")
    assert {"inferenceservices"} in [set(r["resources"]) for r in role["rules"]]
    assert all(
        "*" not in r["verbs"] and "*" not in r["resources"] for o in objects if o["kind"] == "Role" for r in o["rules"]
    )


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_only_the_gateway_is_reachable_from_outside(rendered: dict[str, list[dict]], overlay: str) -> None:
    policies = [o for o in rendered[overlay] if o["kind"] == "NetworkPolicy"]
    deny = _find(policies, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    open_to_all = [
        p["metadata"]["name"] for p in policies for rule in p["spec"].get("ingress", []) if "from" not in rule
    ]
    assert open_to_all == ["gateway-from-anywhere"]
    models = _find(policies, "NetworkPolicy", "models-from-hosting-and-runs")["spec"]
    assert models["egress"] == [] and "Egress" in models["policyTypes"]  # model code reaches nothing
    # The model pods the runtime makes carry the label the policy selects.
    model = _model()
    [expression] = models["podSelector"]["matchExpressions"]
    assert expression["key"] in kube.predictor_spec(model, _settings("kserve"))["labels"]


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_the_config_map_is_settings_the_services_accept(rendered: dict[str, list[dict]], overlay: str) -> None:
    objects = rendered[overlay]
    env = _find(objects, "ConfigMap", "constellation-config")["data"]
    namespace = objects[-1]["metadata"]["namespace"]
    hosting = HostingSettings.from_env({**env, "CONSTELLATION_HOSTING_KUBERNETES_NAMESPACE": namespace})
    assert hosting.kubernetes == "kserve" and not hosting.docker_wanted
    orchestrator = OrchestratorSettings.from_env({**env, "CONSTELLATION_DAGSTER_K8S_NAMESPACE": namespace})
    # Run Jobs use the orchestrator's own image, whatever the overlay made of it (kustomize replacements).
    image = _find(objects, "Deployment", "orchestrator")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert orchestrator.run_launcher == "k8s" and orchestrator.k8s_image == image
    assert orchestrator.k8s_env_secrets == ["constellation-secrets"]
    instance = _find(objects, "ConfigMap", orchestrator.k8s_instance_config_map)
    assert "postgres" in yaml.safe_load(instance["data"]["dagster.yaml"])["storage"]


def test_dev_brings_its_database_and_production_expects_its_secret(rendered: dict[str, list[dict]]) -> None:
    dev, production = rendered["dev"], rendered["production"]
    secret = _find(dev, "Secret", "constellation-secrets")
    # hosting's replicas share one database (its SQLite default would be per pod, on an emptyDir)
    assert set(secret["data"]) >= {
        "DATABASE_URL",
        "CONSTELLATION_DAGSTER_POSTGRES_URL",
        "CONSTELLATION_HOSTING_DATABASE_URL",
    }
    assert "CREATE DATABASE hosting" in _find(dev, "ConfigMap", "postgres-init")["data"]["hosting.sql"]
    assert _find(dev, "StatefulSet", "postgres") and _find(dev, "Deployment", "s3")
    assert not [o for o in production if o["kind"] in ("Secret", "StatefulSet")]
    refs = [
        e["secretRef"]["name"]
        for o in production
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
        for e in c.get("envFrom", [])
        if "secretRef" in e
    ]
    assert refs and set(refs) == {"constellation-secrets"}


def test_the_run_jobs_dagster_instance_is_a_valid_dagster_yaml(rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(
        _find(rendered["dev"], "ConfigMap", "constellation-dagster-instance")["data"]["dagster.yaml"]
    )
    os.environ["CONSTELLATION_DAGSTER_POSTGRES_URL"] = "postgresql+psycopg2://u:p@db:5432/dagster"
    try:
        config = dagster_instance_config(str(tmp_path))[0]
    finally:
        del os.environ["CONSTELLATION_DAGSTER_POSTGRES_URL"]
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "CONSTELLATION_DAGSTER_POSTGRES_URL"}


def test_deploy_kubernetes_prints_the_overlay_and_apply_fails_clearly_without_a_cluster(tmp_path: Path) -> None:
    printed = CliRunner().invoke(cli, ["deploy", "kubernetes", "--overlay", "production"])
    assert printed.exit_code == 0, printed.output
    assert list(yaml.safe_load_all(printed.output)) == list(yaml.safe_load_all(manifests.render("production")))
    kubeconfig = unreachable_kubeconfig(tmp_path)
    applied = CliRunner().invoke(
        cli, ["deploy", "kubernetes", "--overlay", "dev", "--apply"], env={"KUBECONFIG": str(kubeconfig)}
    )
    assert applied.exit_code == 1
    assert "kubectl apply failed" in applied.output and "reachable cluster" in applied.output
    assert "Traceback" not in applied.output


# --------------------------------------------------------------------------- hosting's kubernetes runtime


def strict_schema(schema: object) -> object:
    """The CRD's schema with unknown fields refused wherever it lists an object's fields (as the API server's
    strict field validation does), except where it keeps unknown fields on purpose."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def kserve_crd() -> dict:
    # 2 MB of YAML: libyaml reads it in about a second, the pure-Python loader in half a minute.
    return yaml.load(KSERVE_CRD.read_text(), Loader=yaml.CSafeLoader)


@pytest.fixture(scope="module")
def isvc_validator(kserve_crd: dict) -> jsonschema.Draft7Validator:
    [version] = [v for v in kserve_crd["spec"]["versions"] if v["name"] == kube.VERSION]
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def _settings(mode: str, **values: object) -> HostingSettings:
    return HostingSettings.from_env({}, kubernetes=mode, kubernetes_namespace="constellation", **values)


def _model(version: str = "1.0.0", replicas: int = 1, gpu: int = 0) -> HostedModel:
    return HostedModel(
        id=f"mdl_{version.replace('.', '')}",
        name="water-mlp",
        version=version,
        image=f"registry.example.org/constellation/water-mlp:{version}",
        environment="default",
        replicas=replicas,
        manifest={"resources": {"cpu": 2, "memory": "512m", "gpu": gpu}},
    )


def test_an_inference_service_is_kserve_standard_mode_with_our_image_as_predictor(
    isvc_validator: jsonschema.Draft7Validator,
) -> None:
    settings = _settings("kserve")
    isvc = kube.inference_service(_model(replicas=2), settings)
    isvc_validator.validate(isvc)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    predictor = isvc["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"].endswith("water-mlp:1.0.0")
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"] == {"port": 8001}
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "512Mi"}
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 8)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 70)
    assert predictor["automountServiceAccountToken"] is False
    # A GPU model keeps a fixed count: the HPA cannot see GPUs.
    gpu = kube.inference_service(_model(gpu=1), settings)
    isvc_validator.validate(gpu)
    assert gpu["spec"]["predictor"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "scaleMetric" not in gpu["spec"]["predictor"] and gpu["spec"]["predictor"]["maxReplicas"] == 1


def test_the_crd_schema_refuses_a_wrong_field_or_type(isvc_validator: jsonschema.Draft7Validator) -> None:
    isvc = kube.inference_service(_model(), _settings("kserve"))
    misspelled = copy.deepcopy(isvc)
    misspelled["spec"]["predictor"]["canaryTraficPercent"] = 10
    with pytest.raises(jsonschema.ValidationError):
        isvc_validator.validate(misspelled)
    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        isvc_validator.validate(wrong_type)
    bad_metric = copy.deepcopy(isvc)
    bad_metric["spec"]["predictor"]["scaleMetric"] = "gpu"
    with pytest.raises(jsonschema.ValidationError):
        isvc_validator.validate(bad_metric)


def test_plain_deployment_objects_are_valid_kubernetes() -> None:
    objects = kube.plain_objects(_model(replicas=2), _settings("deployment"))
    assert set(objects) == {"deployment", "service", "autoscaler"}
    for obj in objects.values():
        kubernetes_validate.validate(ApiClient().sanitize_for_serialization(obj), K8S_VERSION, strict=True)
    assert objects["service"].spec.ports[0].name == "h2c"
    assert "autoscaler" not in kube.plain_objects(_model(gpu=1), _settings("deployment"))


def test_transition_states_cover_kserves_enum(kserve_crd: dict) -> None:
    status = kserve_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    enum = status["properties"]["modelStatus"]["properties"]["transitionStatus"]["enum"]
    assert set(kube.TRANSITION_STATES) == set(enum)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ({}, "deploying"),
        ({"modelStatus": {"transitionStatus": "InProgress"}}, "deploying"),
        (
            {"modelStatus": {"transitionStatus": "UpToDate"}, "conditions": [{"type": "Ready", "status": "True"}]},
            "healthy",
        ),
        (
            {"modelStatus": {"transitionStatus": "UpToDate"}, "conditions": [{"type": "Ready", "status": "False"}]},
            "unhealthy",
        ),
        ({"modelStatus": {"transitionStatus": "BlockedByFailedLoad", "lastFailureInfo": {"message": "OOM"}}}, "failed"),
        ({"modelStatus": {"transitionStatus": "InvalidSpec"}}, "failed"),
    ],
)
def test_an_inference_services_status_maps_to_our_states(status: dict, state: str) -> None:
    assert kube.state_of({"kind": "InferenceService", "status": status})[0] == state


def test_a_deployments_conditions_map_to_our_states() -> None:
    def deployment(conditions: list[dict], updated: int = 1) -> dict:
        return {
            "kind": "Deployment",
            "spec": {"replicas": 1},
            "status": {"conditions": conditions, "updatedReplicas": updated},
        }

    assert kube.state_of(deployment([{"type": "Available", "status": "True"}]))[0] == "healthy"
    assert kube.state_of(deployment([{"type": "Available", "status": "True"}], updated=0))[0] == "deploying"
    stuck = {"type": "Progressing", "status": "False", "message": "ProgressDeadlineExceeded"}
    assert kube.state_of(deployment([stuck])) == ("failed", "ProgressDeadlineExceeded")
    assert kube.state_of(None)[0] == "deleted"


def _api_error(status: int, reason: str) -> ApiException:
    """What the real REST client raises for a non-2xx answer: the status and a Status body."""
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "apiVersion": "v1", "code": status, "reason": reason}).encode()
    return error


class FakeApiServer(RESTClientObject):
    """The Kubernetes API as an in-memory store at the client's HTTP boundary: objects by path, 404 for what is
    not there, 409 for a create that exists or a replace with a stale resourceVersion. Records every write."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.writes: list[tuple[str, str, dict | None]] = []  # (method, resource plural, body)
        self._version = 0

    def request(
        self,
        method,
        url,
        query_params=None,
        headers=None,
        body=None,
        post_params=None,
        _preload_content=True,
        _request_timeout=None,
    ):
        path = urlparse(url).path
        query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()} | dict(query_params or [])
        parts = path.rstrip("/").split("/")
        if method != "GET":
            plural = parts[-1] if method == "POST" else parts[-2]
            self.writes.append((method, plural, copy.deepcopy(body)))
        if method == "POST":
            path = f"{path}/{body['metadata']['name']}"
            if path in self.objects:
                raise _api_error(409, "AlreadyExists")
            return self._respond(self._store(path, body))
        if method == "GET" and path not in self.objects and parts[-1] in ("inferenceservices", "deployments", "pods"):
            wanted = dict(item.split("=", 1) for item in query.get("labelSelector", "").split(",") if item)
            items = [
                o
                for p, o in self.objects.items()
                if p.rsplit("/", 1)[0] == path and wanted.items() <= (o["metadata"].get("labels") or {}).items()
            ]
            return self._respond({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        if path not in self.objects:
            raise _api_error(404, "NotFound")
        if method == "GET":
            return self._respond(self.objects[path])
        if method == "PUT":
            if body["metadata"].get("resourceVersion") != self.objects[path]["metadata"]["resourceVersion"]:
                raise _api_error(409, "Conflict")
            return self._respond(self._store(path, body))
        del self.objects[path]
        return self._respond({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})

    def _store(self, path: str, body: dict) -> dict:
        self._version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.objects[path] = stored
        return stored

    @staticmethod
    def _respond(data: dict) -> object:
        class Response:
            status, reason = 200, "OK"

            def __init__(self) -> None:
                self.data = json.dumps(data).encode()

            def getheaders(self) -> dict:
                return {"content-type": "application/json; charset=utf-8"}

            def getheader(self, name: str, default: str | None = None) -> str | None:
                return self.getheaders().get(name.lower(), default)

        return Response()


def _runtime(mode: str) -> tuple[kube.KubernetesRuntime, FakeApiServer]:
    configuration = Configuration()
    configuration.host = "https://cluster.invalid"
    api_client = ApiClient(configuration)
    server = FakeApiServer()
    api_client.rest_client = server
    return kube.KubernetesRuntime(_settings(mode), api_client), server


def documented_transitions(mode: str) -> dict[str, list[tuple[str, str]]]:
    """docs/kubernetes.md's table for `mode`: transition -> [(method, resource plural)] in order."""
    text = DOCS.read_text()
    table = text.split(f"<!-- transitions:{mode} -->", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = re.findall(r"`(POST|PUT|DELETE) (\w+)`", cells[2])
    return rows


@pytest.mark.parametrize("mode", ["kserve", "deployment"])
def test_each_transition_sends_what_the_docs_say(mode: str, isvc_validator: jsonschema.Draft7Validator) -> None:
    runtime, server = _runtime(mode)
    documented = documented_transitions(mode)
    assert set(documented) == {"create", "scale", "canary", "promote", "rollback", "delete"}
    v1, v2, v3 = _model("1.0.0"), _model("2.0.0"), _model("3.0.0")
    sent: dict[str, list[tuple[str, str]]] = {}

    def step(name: str, action) -> list[dict]:
        server.writes.clear()
        action()
        sent[name] = [(method, plural) for method, plural, _ in server.writes]
        bodies = [
            body for _, _, body in server.writes if body and body.get("kind") in ("InferenceService", "Deployment")
        ]
        for body in bodies:
            if mode == "kserve":
                isvc_validator.validate(body)
            else:
                kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        return bodies

    def predictor(body: dict) -> dict:
        return body["spec"]["predictor"] if mode == "kserve" else body["spec"]["template"]["spec"]

    def owner(body: dict) -> str:
        return body["metadata"]["annotations"][kube.ANNOTATION_MODEL]

    [created] = step("create", lambda: runtime.start(v1, 0, 0))
    assert owner(created) == v1.id and predictor(created)["containers"][0]["image"] == v1.image
    v1.replicas = 3
    [scaled] = step("scale", lambda: runtime.start(v1, 0, 0))
    assert (predictor(scaled).get("minReplicas") or scaled["spec"]["replicas"]) == 3
    [canary] = step("canary", lambda: runtime.start(v2, 0, 0))
    assert owner(canary) == v2.id and canary["metadata"]["annotations"][kube.ANNOTATION_PREVIOUS] == v1.id
    assert predictor(canary)["containers"][0]["image"] == v2.image
    if mode == "kserve":
        assert predictor(canary)["canaryTrafficPercent"] == 10
    # The Deployer retires v1 once v2 is healthy: stopping the previous version promotes the canary.
    assert runtime.running() == {v2.id: ["constellation/water-mlp-default"], v1.id: ["constellation/water-mlp-default"]}
    [promoted] = step("promote", lambda: runtime.stop(v1, "constellation/water-mlp-default"))
    assert owner(promoted) == v2.id and kube.ANNOTATION_PREVIOUS not in promoted["metadata"]["annotations"]
    assert "canaryTrafficPercent" not in predictor(promoted)
    # A v3 canary that fails is stopped: v2's predictor comes back.
    runtime.start(v3, 0, 0)
    [rolled_back] = step("rollback", lambda: runtime.stop(v3, "constellation/water-mlp-default"))
    assert owner(rolled_back) == v2.id and predictor(rolled_back)["containers"][0]["image"] == v2.image
    assert rolled_back["metadata"]["annotations"][kube.ANNOTATION_VERSION] == "2.0.0"
    step("delete", lambda: runtime.stop(v2, "constellation/water-mlp-default"))
    assert not server.objects and runtime.running() == {}
    assert sent == documented


def test_a_replace_carries_the_resource_version_it_read() -> None:
    runtime, server = _runtime("kserve")
    model = _model()
    runtime.start(model, 0, 0)
    [read] = [o["metadata"]["resourceVersion"] for o in server.objects.values()]
    server.writes.clear()
    runtime.start(model, 0, 0)  # scale: a PUT guarded by what it read, so a concurrent change gets 409
    [(method, _, body)] = server.writes
    assert method == "PUT" and body["metadata"]["resourceVersion"] == read


def test_hosting_without_cluster_credentials_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="CONSTELLATION_HOSTING_KUBERNETES=kserve needs a cluster"):
        kube.api_client(_settings("kserve"))
    assert kube.api_client(_settings("off")) is None


def test_long_names_stay_within_kserves_limits() -> None:
    model = _model()
    model.name, model.environment = "a-very-long-model-name-for-surface-water-mapping", "staging-europe-west"
    name = kube.resource_name(model)
    assert len(name) <= kube.MAX_NAME and re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name)
    assert kube.resource_name(model) != kube.resource_name(_model())


# --------------------------------------------------------------------------- the orchestrator's run Jobs


def _orchestrator_settings() -> OrchestratorSettings:
    return OrchestratorSettings.from_env(
        {
            "CONSTELLATION_DAGSTER_RUN_LAUNCHER": "k8s",
            "CONSTELLATION_DAGSTER_K8S_IMAGE": "registry.example.org/constellation/mesh:0.1.0",
            "CONSTELLATION_DAGSTER_K8S_NAMESPACE": "constellation",
            "CONSTELLATION_DAGSTER_K8S_SERVICE_ACCOUNT": "constellation-model",
            "CONSTELLATION_DAGSTER_K8S_ENV_CONFIG_MAPS": "constellation-config",
            "CONSTELLATION_DAGSTER_K8S_ENV_SECRETS": "constellation-secrets",
            "CONSTELLATION_DAGSTER_POSTGRES_URL": "postgresql://dagster:s3cret-password@db:5432/dagster",
        }
    )


def test_the_k8s_launcher_needs_an_image() -> None:
    with pytest.raises(ValueError, match="CONSTELLATION_DAGSTER_K8S_IMAGE"):
        OrchestratorSettings.from_env({"CONSTELLATION_DAGSTER_RUN_LAUNCHER": "k8s"})


def test_the_instance_runs_on_dagster_k8s_with_a_config_it_accepts() -> None:
    settings = _orchestrator_settings()
    launcher = instance_config(settings)["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("orchestrator_svc.k8s_launcher", "K8sWorkerRunLauncher")
    checked = process_config(K8sWorkerRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors
    assert launcher["config"] == launcher_config(settings)


def test_a_run_job_is_built_by_dagster_k8s_and_valid_kubernetes(tmp_path: Path) -> None:
    settings = _orchestrator_settings()
    config = process_config(K8sWorkerRunLauncher.config_type(), launcher_config(settings)).value
    kubeconfig = unreachable_kubeconfig(tmp_path)  # the launcher loads a config at start; nothing is sent
    with DagsterInstance.ephemeral() as instance:
        launcher = K8sWorkerRunLauncher(
            **{**config, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
        )
        launcher.register_instance(instance)
        run = DagsterRun(job_name="constellation_run", run_id="5c1e2b7a-0000-4000-8000-000000000001")
        job = ApiClient().sanitize_for_serialization(launcher.build_job(run))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["python", "-m", "orchestrator_svc.worker", run.run_id]
    assert container["image"] == settings.k8s_image and pod["serviceAccountName"] == "constellation-model"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "run_worker"  # networkpolicies.yaml
    env = {e["name"]: e.get("value") for e in container["env"]}
    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == f"{env['DAGSTER_HOME']}/dagster.yaml" == f"{DAGSTER_HOME}/dagster.yaml"
    assert pod["volumes"] == [{"name": mount["name"], "configMap": {"name": "constellation-dagster-instance"}}]
    assert [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e] == ["constellation-secrets"]
    assert "s3cret-password" not in json.dumps(job)  # credentials come from the Secret, never the Job
    assert container["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    assert job["spec"]["backoffLimit"] == 0


# --------------------------------------------------------------------------- the gateway on Kubernetes


def test_the_gateway_resolves_service_names_and_starts_from_its_settings(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "CONSTELLATION_HOME": str(tmp_path),
        "CONSTELLATION_HOST": "127.0.0.1",
        "CONSTELLATION_GATEWAY_PORT": str(port),
        "CONSTELLATION_CONSOLE_PORT": "0",
        # Service names, as in deploy/kubernetes's ConfigMap (localhost resolves here; the services need not run).
        **{
            f"CONSTELLATION_{name.upper()}_ADDR": f"localhost:{p}"
            for name, p in [("core", 1), ("hosting", 2), ("orchestrator", 3), ("agent", 4)]
        },
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        supervisor.wait_ready(admin.socket_path(tmp_path), timeout_s=30, process=process)
        config = yaml.safe_load((tmp_path / "envoy.yaml").read_text())
        clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
        assert clusters["core"]["type"] == "STRICT_DNS" and clusters["console"]["type"] == "STATIC"
        assert config["static_resources"]["listeners"][0]["address"]["socket_address"] == {
            "address": "127.0.0.1",
            "port_value": port,
        }
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- the orchestrator's take-over of Jobs


def test_a_new_owner_adopts_a_running_job_and_reexecutes_a_run_whose_job_failed_or_is_gone(tmp_path: Path) -> None:
    """runs.takeover with the Kubernetes launcher, the API at its HTTP boundary (no cluster here): a live Job is
    adopted, a failed or missing one (deleted, gone with its node's namespace) re-executed, and an adopted run
    whose Job disappears is settled rather than left RUNNING."""
    config = process_config(K8sWorkerRunLauncher.config_type(), launcher_config(_orchestrator_settings())).value
    with DagsterInstance.ephemeral() as instance:
        launcher = K8sWorkerRunLauncher(
            **{**config, "load_incluster_config": False, "kubeconfig_file": str(unreachable_kubeconfig(tmp_path))}
        )
        launcher.register_instance(instance)
        server = FakeApiServer()
        launcher._api_client.batch_api.api_client.rest_client = server
        run = instance.add_run(
            DagsterRun(job_name="constellation_run", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED)
        )
        job_name = get_job_name_from_run_id(run.run_id)
        path = f"/apis/batch/v1/namespaces/constellation/jobs/{job_name}/status"
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job_name, "namespace": "constellation"}}

        assert takeover(run, launcher, "orchestrator-0") == REEXECUTE, "no Job: its worker is gone"
        server.objects[path] = {**job, "status": {"active": 1}}
        assert takeover(run, launcher, "orchestrator-0") == ADOPT
        server.objects[path] = {**job, "status": {"failed": 1}}
        assert takeover(run, launcher, "orchestrator-0") == REEXECUTE
        canceling = instance.add_run(
            DagsterRun(job_name="constellation_run", run_id=str(uuid.uuid4()), status=DagsterRunStatus.CANCELING)
        )
        assert takeover(canceling, launcher, "orchestrator-0") == SETTLE
        assert server.writes == [], "deciding sends nothing to the cluster"

        server.objects[path] = {**job, "status": {"active": 1}}
        launcher.watch_adopted(run.run_id, poll_s=0.05)
        time.sleep(0.3)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED, "its Job runs: followed"
        del server.objects[path]  # the Job is deleted (or its node and namespace went) while the run was active
        deadline = time.monotonic() + 10
        while instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED:
            assert time.monotonic() < deadline, "the adopted run was left RUNNING without a Job"
            time.sleep(0.05)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        launcher.dispose()
