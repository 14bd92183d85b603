"""compose.yaml for real: the whole mesh under docker-compose (its own project name, ports and volumes), the main
job through its gateway with the SDK and the CLI, the outputs checked as the demo's are, then `down` + `up` and
everything still there, then `down -v`.

The images are built with the network off from the local base images and build/wheelhouse
(scripts/compose_prepare.sh); the images stay cached between runs (only the code layers rebuild), the volumes
and the model containers this stack started are removed.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import boto3
import grpc
import pytest
import requests

from constellation.agent.v1 import agent_pb2
from constellation.core.v1 import core_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation_sdk import Client, catalog, watch
from tests import test_main_job
from tests.conftest import MEASURED_FIGURES
from tests.hosting_support import require_docker
from tests.pg import free_port
from tests.test_main_job import SCENE, check_outputs, check_stream

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MODEL = "ndwi-water"
BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
# The host ports the stack publishes (on 127.0.0.1): nothing else of it listens on the host.
PORTS = ["CONSTELLATION_GATEWAY_PORT", "CONSTELLATION_COMPOSE_S3_PORT", "CONSTELLATION_DAGSTER_UI_PORT"]
CORES = 2  # core replicas behind the gateway (`--scale core=2`)


class Stack:
    """One compose project (COMPOSE_PROJECT_NAME, which also names its networks) with its own host ports."""

    def __init__(self, tmp: Path, cores: int = 1) -> None:
        self.project = f"cstltest{secrets.token_hex(4)}"
        self.cores = cores
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSTELLATION_", "AWS_", "COMPOSE_"))}
        self.env["COMPOSE_PROJECT_NAME"] = self.project
        self.env.update({name: str(free_port()) for name in PORTS})
        self.env["DOCKER_GID"] = str(os.stat("/var/run/docker.sock").st_gid)
        self.gateway = f"127.0.0.1:{self.env['CONSTELLATION_GATEWAY_PORT']}"
        self.s3 = f"http://127.0.0.1:{self.env['CONSTELLATION_COMPOSE_S3_PORT']}"
        self.tls_dir = tmp / "tls"
        self.tls_dir.mkdir()

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["docker-compose", "-p", self.project, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, (
                f"docker-compose {' '.join(args)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def up(self, build: bool = False) -> float:
        """`build` first when asked: compose v1's `up --build` pulls constellation/mesh:dev for the services that
        only run it, before the one service that builds it, and there is no registry to pull from."""
        start = time.monotonic()
        if build:
            self.compose("build", timeout=1800)
        self.compose("up", "-d", "--scale", f"core={self.cores}", timeout=1800)
        self.wait_ready()
        return time.monotonic() - start

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            health = self.compose("ps", "-q", "gateway").stdout.strip()
            state = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.Health.Status}}", health],
                capture_output=True,
                text=True,
            ).stdout.strip()
            if state == "healthy":
                return
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--tail", "30", check=False).stdout[-6000:]
                pytest.fail(f"the compose gateway is {state or 'missing'} after {timeout_s:.0f} s:\n{logs}")
            time.sleep(2)

    def remove(self) -> None:
        """`down -v`, then hosting's models network, which is not compose's (it outlives `down`, as the model
        containers on it do), and what a failed test left on the stack's networks (model containers when
        StopDeployments failed, a run's container), then `down -v` again for the networks and volumes."""
        self.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        # Run containers the orchestrator had no time to remove (it removes a finished run's; `down` stopped it).
        ps = ["docker", "ps", "-aq", "--filter", "label=constellation.component=run-worker"]
        ps += ["--filter", f"network={self.project}-mesh"]
        if runs := subprocess.run(ps, capture_output=True, text=True).stdout.split():
            subprocess.run(["docker", "rm", "-f", *runs], capture_output=True, check=False)
        for network in ("models", "mesh", "outside"):
            found = subprocess.run(
                ["docker", "network", "inspect", f"{self.project}-{network}"], capture_output=True, text=True
            )
            if found.returncode == 0:
                if left := list(json.loads(found.stdout)[0]["Containers"] or {}):
                    subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
                subprocess.run(["docker", "network", "rm", f"{self.project}-{network}"], capture_output=True)
        self.compose("down", "-v", "--remove-orphans", timeout=300, check=False)

    def read(self, service: str, path: str) -> str:
        return self.compose("exec", "-T", service, "cat", path).stdout

    def client(self) -> Client:
        (self.tls_dir / "ca.crt").write_text(self.read("core", "/data/certs/ca.crt"))
        client = Client(self.gateway, api_key=self.admin_key, tls_dir=self.tls_dir)
        client.wait_ready(30)
        return client

    @property
    def admin_key(self) -> str:
        return self.read("core", "/data/credentials/admin.key").strip()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {
            **self.env,
            "CONSTELLATION_GATEWAY": self.gateway,
            "CONSTELLATION_API_KEY": self.admin_key,
            "CONSTELLATION_TLS_DIR": str(self.tls_dir),
            "CONSTELLATION_S3_ENDPOINT_URL": self.s3,
            **S3_KEYS,
        }
        return subprocess.run(
            [sys.executable, "-c", "from constellation_sdk.cli import main; main()", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )


S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "constellation",
    "AWS_SECRET_ACCESS_KEY": "constellation-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_docker()
    prepare = subprocess.run(
        [str(ROOT / "scripts" / "compose_prepare.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PY": sys.executable},
    )
    assert prepare.returncode == 0, prepare.stdout[-3000:] + prepare.stderr[-3000:]
    stack = Stack(tmp_path_factory.mktemp("compose"), cores=CORES)
    try:
        seconds = stack.up(build=True)
        MEASURED_FIGURES.append(f"compose: `build` and `up -d` until the gateway is healthy: {seconds:.0f} s")
        yield stack
    finally:
        try:
            with stack.client() as client:
                client.hosting.StopDeployments(hosting_pb2.StopDeploymentsRequest(), timeout=120)
        except Exception as error:  # noqa: BLE001 - teardown goes on: the volumes must go whatever happened
            print(f"StopDeployments at teardown: {error}")
        stack.remove()


def register_and_plan(client: Client, s3: str) -> core_pb2.Pipeline:
    """The Olinda scene in the stack's S3 store, the NDWI model from the image's examples, the agent's plan."""
    store = boto3.client(
        "s3",
        endpoint_url=s3,
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_KEYS["AWS_DEFAULT_REGION"],
    )
    store.upload_file(str(SCENE), "constellation", "scenes/L7_ETMs.tif")
    dataset = catalog.scene_dataset(SCENE, "olinda-landsat7", BANDS, sensor="landsat-7", tags=["water"])
    dataset.uri = "s3://constellation/scenes/L7_ETMs.tif"
    dataset = catalog.ensure_dataset(client.core, dataset)
    model = catalog.model_from_folder(ROOT / "examples" / "models" / MODEL)
    model.source = f"/app/examples/models/{MODEL}"  # hosting's container has the examples (docker/mesh.Dockerfile)
    model = catalog.ensure_model(client.core, model)
    answer = client.agent.PlanPipeline(
        agent_pb2.PlanPipelineRequest(prompt="map surface water in the Olinda scene", model_id=model.id)
    )
    exports = [b.export.uri for b in answer.spec.blocks if b.WhichOneof("config") == "export"]
    assert exports and all(u.startswith("s3://constellation/outputs") for u in exports), exports
    return catalog.ensure_pipeline(client.core, "olinda-water-compose", answer.spec, description="compose test")


def check_stac_in_s3(summary: dict, cog: Path) -> None:
    """check_outputs' STAC part for outputs in the S3 store: the run's item is valid STAC and its assets are the
    run's data outputs as the store names them (s3://), not the local copies."""
    from tests.stac_schemas import assert_valid

    stac = {o["name"]: Path(o["uri"].removeprefix("file://")) for o in summary["outputs"] if "stac" in o["media_type"]}
    item = json.loads(stac["item_stac"].read_text())
    assert_valid(item)
    data = {o["s3"] for o in summary["outputs"] if "stac" not in o["media_type"]}
    assert {a["href"] for a in item["assets"].values()} == data
    assert item["properties"]["constellation:run_id"] == summary["run_id"]


def test_the_main_job_under_compose_survives_down_and_up(stack, tmp_path, monkeypatch):
    started = time.monotonic()
    with stack.client() as client:
        pipeline = register_and_plan(client, stack.s3)
    # The CLI runs it through the gateway and follows it to the end.
    ran = stack.cli("run", pipeline.id, "--json")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    assert report["state"] == "succeeded", report
    run_id = report["run_id"]
    MEASURED_FIGURES.append(
        f"compose: main job (deploy included) through the gateway: {time.monotonic() - started:.0f} s"
    )
    fetched = stack.cli("runs", "outputs", run_id, "--dest", str(tmp_path / "out"), "--json")
    assert fetched.returncode == 0, fetched.stdout[-3000:] + fetched.stderr[-3000:]
    rows = json.loads(fetched.stdout)
    files = sorted((tmp_path / "out").rglob("*"))
    monkeypatch.setattr(test_main_job, "check_stac", check_stac_in_s3)
    check_outputs({**summary_of(rows), "run_id": run_id})
    with stack.client() as client:
        check_stream(client, run_id, "docker", MODEL)
        before = snapshot(client, run_id)
        # Endpoints are published by container name on the stack's models network, not on the host's loopback.
        [status] = [
            m for m in client.hosting.ListModels(hosting_pb2.ListModelsRequest()).models if m.model_name == MODEL
        ]
        assert status.endpoints, status
        hosts = [e.address.rpartition(":")[0] for e in status.endpoints]
        assert all(h.startswith(f"constellation-{MODEL}-") and h.endswith(".models") for h in hosts), hosts
        models = [h.removesuffix(".models") for h in hosts]
        check_confined(stack, models[0])
        check_published_ports(stack, models)
        [model_id] = [m.id for m in client.core.ListModels(core_pb2.ListModelsRequest()).models if m.name == MODEL]
        check_core_replicas(stack, client, model_id)

    # The console is in the gateway image, served over HTTPS; the operator's login link works once.
    page = requests.get(f"https://{stack.gateway}/", verify=str(stack.tls_dir / "ca.crt"), timeout=30)
    assert page.status_code == 200 and "<div id=" in page.text, page.text[:300]
    link = stack.compose(
        "exec", "-T", "gateway", "constellation", "login-link", "--console", f"https://{stack.gateway}/"
    ).stdout.strip()
    assert link.startswith(f"https://{stack.gateway}/?login="), link

    # down (volumes kept) then up: every dataset, model, pipeline, run, event and output is still there.
    stack.compose("down", timeout=300)
    assert not stack.compose("ps", "-q").stdout.strip()
    stack.up()
    with stack.client() as client:
        assert snapshot(client, run_id) == before
    again = tmp_path / "again"
    fetched = stack.cli("runs", "outputs", run_id, "--dest", str(again))
    assert fetched.returncode == 0, fetched.stdout[-3000:] + fetched.stderr[-3000:]
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()} == {
        p.relative_to(tmp_path / "out"): p.read_bytes() for p in files if p.is_file()
    }
    with stack.client() as client:
        check_orchestrator_restart_mid_run(stack, client, pipeline.id)


def check_orchestrator_restart_mid_run(stack: Stack, client: Client, pipeline_id: str) -> None:
    """The orchestrator's container stops while a run's container works, and starts again: the run's container
    is the engine's, not the orchestrator's, so it goes on, and the run succeeds."""
    run = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline_id))
    ps = ["docker", "ps", "-q", "--filter", "label=constellation.component=run-worker"]
    ps += ["--filter", f"network={stack.project}-mesh"]
    deadline = time.monotonic() + 120
    while not (workers := subprocess.run(ps, capture_output=True, text=True, check=True).stdout.split()):
        assert time.monotonic() < deadline, "no run container started"
        time.sleep(0.2)
    [orchestrator] = stack.compose("ps", "-q", "orchestrator").stdout.split()
    subprocess.run(["docker", "stop", "-t", "10", orchestrator], capture_output=True, check=True, timeout=60)
    state = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Running}}", workers[0]], capture_output=True, text=True
    )
    assert state.stdout.strip() == "true", "the run's container stopped with the orchestrator (or finished first)"
    subprocess.run(["docker", "start", orchestrator], capture_output=True, check=True, timeout=60)
    report = watch.follow(client.core, run.id, lambda _event: None)
    assert report.state == "succeeded", report.run.state_message


PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "reached")
    except OSError as error:
        print(target, "unreachable", type(error).__name__)
"""


def inspect(container: str) -> dict:
    return json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, check=True).stdout)[0]


def mesh_address(stack: Stack, service: str) -> str:
    [container] = stack.compose("ps", "-q", service).stdout.split()
    return inspect(container)["NetworkSettings"]["Networks"][f"{stack.project}-mesh"]["IPAddress"]


def check_confined(stack: Stack, model: str) -> None:
    """From inside a model container: PostgreSQL, S3 and core are out of reach, by name and by address."""
    targets = [
        "postgres:5432",
        f"{mesh_address(stack, 'postgres')}:5432",
        "s3:9000",
        f"{mesh_address(stack, 's3')}:9000",
        "core:50051",
    ]
    probe = subprocess.run(
        ["docker", "exec", model, "python", "-c", PROBE, *targets], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert len(lines) == len(targets) and all(" unreachable " in line for line in lines), probe.stdout


def check_published_ports(stack: Stack, models: list[str]) -> None:
    """No container of the stack (model containers included) is on the host's network, and the only ports it
    publishes are the gateway's, the S3 store's and the Dagster UI's, on the host's 127.0.0.1."""
    published = set()
    for container in [*stack.compose("ps", "-q").stdout.split(), *models]:
        details = inspect(container)
        assert details["HostConfig"]["NetworkMode"] != "host", details["Name"]
        for bindings in (details["NetworkSettings"]["Ports"] or {}).values():
            published |= {(b["HostIp"], b["HostPort"]) for b in bindings or []}
    assert published == {("127.0.0.1", stack.env[name]) for name in PORTS}, published
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout.split("\n")
    gateway = [
        line.split()[3]
        for line in listening
        if line.split()[3:4] and line.split()[3].endswith(f":{stack.env[PORTS[0]]}")
    ]
    assert gateway == [stack.gateway], gateway


def check_core_replicas(stack: Stack, client: Client, model_id: str) -> None:
    """Both core replicas are endpoints of Envoy's core cluster and both served calls of the job; with one
    stopped, calls through the gateway (and the agent's to core) still succeed."""
    cores = stack.compose("ps", "-q", "core").stdout.split()
    assert len(cores) == CORES, cores
    addresses = {inspect(c)["NetworkSettings"]["Networks"][f"{stack.project}-mesh"]["IPAddress"] for c in cores}
    clusters = stack.compose(
        "exec", "-T", "gateway", "python", "-m", "gateway.admin", "/data/envoy-admin.sock", "/clusters"
    ).stdout.splitlines()
    served = {}
    for line in clusters:
        name, _, rest = line.partition("::")
        if name == "core" and "::rq_success::" in rest:
            served[rest.split("::")[0].rpartition(":")[0]] = int(rest.rpartition("::")[2])
    assert set(served) == addresses and all(served.values()), (served, addresses)
    subprocess.run(["docker", "stop", "-t", "10", cores[0]], capture_output=True, check=True, timeout=60)
    for _ in range(6):
        client.core.ListDatasets(core_pb2.ListDatasetsRequest(), timeout=30)
        client.agent.PlanPipeline(
            agent_pb2.PlanPipelineRequest(prompt="map surface water in the Olinda scene", model_id=model_id), timeout=60
        )


def summary_of(rows: list[dict]) -> dict:
    """check_outputs' view of the files `runs outputs --dest --json` fetched (the demo's summary: outputs, the
    model, water pixels)."""
    import rasterio

    [mask] = [r["path"] for r in rows if r["media_type"].startswith("image/tiff")]
    with rasterio.open(mask) as data:
        water = int((data.read(1) > 0.5).sum())
    outputs = [
        {"name": r["name"], "uri": f"file://{r['path']}", "s3": r["uri"], "media_type": r["media_type"]} for r in rows
    ]
    return {"outputs": outputs, "models": [MODEL], "water_pixels": water}


def snapshot(client: Client, run_id: str) -> dict:
    core = client.core
    run = core.GetRun(core_pb2.GetRunRequest(id=run_id))
    events = list(core.WatchRun(core_pb2.WatchRunRequest(run_id=run_id), timeout=60))
    return {
        "datasets": sorted(d.id for d in core.ListDatasets(core_pb2.ListDatasetsRequest()).datasets),
        "models": sorted(m.id for m in core.ListModels(core_pb2.ListModelsRequest()).models),
        "pipelines": sorted(p.id for p in core.ListPipelines(core_pb2.ListPipelinesRequest()).pipelines),
        "runs": sorted(r.id for r in core.ListRuns(core_pb2.ListRunsRequest()).runs),
        "run": (run.state, sorted(o.uri for o in run.outputs)),
        "events": [(e.sequence, e.type, e.source, e.message) for e in events],
    }


def test_compose_refuses_a_stranger(stack):
    """The stack's gateway is authenticated and TLS only: no key is UNAUTHENTICATED, plaintext does not connect."""
    (stack.tls_dir / "ca.crt").write_text(stack.read("core", "/data/certs/ca.crt"))
    with Client(stack.gateway, api_key="", tls_dir=stack.tls_dir) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.core.ListDatasets(core_pb2.ListDatasetsRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    plain = grpc.insecure_channel(stack.gateway)
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(plain).result(timeout=5)
    plain.close()
