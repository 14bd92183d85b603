"""The `constellation` command: run the mesh locally, and do the main job step by step.

Every command talks to the gateway: $CONSTELLATION_GATEWAY, else the local mesh's (from
`constellation up`), else localhost:8080. The API key comes from $CONSTELLATION_API_KEY, else from the local
mesh's generated $CONSTELLATION_HOME/credentials/admin.key; TLS from $CONSTELLATION_TLS_DIR, else the local mesh's
certificates when it runs with TLS.
`--json` prints machine-readable output.
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import click
import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from clients.hosting import DeployFailed, DeployHooks, ModelDeployer, Target, find_hosted, state_name
from clients.paging import pages
from constellation.agent.v1 import agent_pb2
from constellation.core.v1 import audit_pb2, core_pb2, identity_pb2
from constellation.hosting.v1 import hosting_pb2
from constellation_sdk import catalog, manifests, mesh_process, outputs, watch
from constellation_sdk.client import Client
from constellation_sdk.settings import ClientSettings
from mesh import certs, config, credentials
from mesh.errors import field_violations


@click.group()
def main() -> None:
    """Constellation: ML models over satellite imagery, as a gRPC mesh."""


@main.command()
@click.option(
    "--timeout", "timeout_s", default=60.0, show_default=True, help="Seconds to wait for each part to answer."
)
@click.option(
    "--tls",
    is_flag=True,
    help="Run everything with TLS: the gateway serves HTTPS and gRPC over TLS, services talk mTLS (makes the "
    "certificates in $CONSTELLATION_HOME/certs when they are missing).",
)
@click.option(
    "--replicas",
    default=1,
    show_default=True,
    type=click.IntRange(1, 8),
    help="Processes of core, hosting and the agent, balanced by the gateway; a run's driver (a deployment's "
    "watcher) moves to another core (hosting) when its own dies. With more than one, set DATABASE_URL and "
    "CONSTELLATION_HOSTING_DATABASE_URL to PostgreSQL.",
)
def up(timeout_s: float, tls: bool, replicas: int) -> None:
    """Start core, hosting, orchestrator, agent and the Envoy gateway in the background."""
    try:
        state = mesh_process.up(timeout_s=timeout_s, tls=tls, replicas=replicas)
    except (RuntimeError, ValueError) as error:  # ValueError: settings or certificates that do not fit
        raise click.ClickException(str(error)) from None
    click.echo(f"mesh running (state and logs in {state['home']})")
    for name, entry in state["processes"].items():
        click.echo(f"  {name:<13} {entry['address']:<22} pid {entry['pid']}")
    gateway = state["processes"]["gateway"]["address"]
    if state["tls_dir"]:
        ca = Path(state["tls_dir"]) / "ca.crt"
        click.echo(f'gateway: grpcurl -cacert {ca} {gateway} list   |   Client("{gateway}", tls_dir="{ca.parent}")')
        click.echo(f"console: trust {ca} in the browser")
    else:
        click.echo(f'gateway: grpcurl -plaintext {gateway} list   |   Client(gateway="{gateway}")')
    for line in mesh_process.announce_credentials(state):
        click.echo(line)


@main.command("login-link")
@click.option(
    "--console",
    "console",
    default="",
    help="The console's URL, for a mesh `up` did not start (compose: "
    "`docker-compose exec -T gateway constellation login-link --console https://127.0.0.1:8080/`).",
)
def login_link(console: str) -> None:
    """Print a fresh one-time link that logs a browser into the local mesh's console."""
    try:
        click.echo(mesh_process.login_link(console=console))
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None


@main.command("certs")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write them [default: $CONSTELLATION_TLS_DIR, else $CONSTELLATION_HOME/certs].",
)
@click.option("--host", "hosts", multiple=True, help="Another name or address services are dialled by (repeatable).")
@click.option("--rotate", is_flag=True, help="Renew every certificate, not only those that expire within 30 days.")
def certs_command(folder: Path | None, hosts: tuple[str, ...], rotate: bool) -> None:
    """Make the mesh's CA and a certificate for each service, the gateway and `client`.

    Running it again keeps the CA and renews what expires within 30 days or lacks a --host name;
    restart the mesh afterwards (`constellation down && constellation up --tls`)."""
    folder = folder or config.tls_dir(ClientSettings.from_env().tls_dir_raw) or config.home_dir() / "certs"
    for issued in certs.issue(folder, hosts, rotate=rotate):
        click.echo(f"  {issued.name:<13} {issued.action:<8} valid until {issued.not_after:%Y-%m-%d}")
    click.echo(f"certificates in {folder} (CA: {folder / 'ca.crt'})")


@main.command()
def down() -> None:
    """Stop the local mesh (gateway first, then the services, each drained gracefully)."""
    stopped = mesh_process.down()
    click.echo("stopped: " + ", ".join(stopped) if stopped else "no mesh was running")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(as_json: bool) -> None:
    """Health of each part of the local mesh. Exits 1 unless every part is SERVING."""
    report = mesh_process.status()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not report:
        click.echo("no mesh is running; start one with `constellation up`")
    else:
        for name, entry in report.items():
            state = "SERVING" if entry["serving"] else ("NOT_SERVING" if entry["running"] else "STOPPED")
            click.echo(f"{name:<13} {state:<12} {entry['address']:<22} pid {entry['pid']}")
    sys.exit(0 if report and all(e["serving"] for e in report.values()) else 1)


@main.group()
def deploy() -> None:
    """Deploy the mesh onto a platform: kubernetes."""


@deploy.command("kubernetes")
@click.option("--overlay", type=click.Choice(manifests.OVERLAYS), default="dev", show_default=True)
@click.option("--apply", "apply_", is_flag=True, help="Apply them with `kubectl apply -f -` (needs a cluster).")
def deploy_kubernetes(overlay: str, apply_: bool) -> None:
    """Print the mesh's manifests for OVERLAY (kubectl kustomize deploy/kubernetes/overlays/OVERLAY), or apply
    them to the cluster of kubectl's current context. docs/kubernetes.md says what each overlay holds."""
    try:
        rendered = manifests.render(overlay)
        click.echo(manifests.apply(rendered) if apply_ else rendered, nl=not rendered.endswith("\n"))
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        raise click.ClickException(str(error)) from None


# --------------------------------------------------------------------------- the main job, step by step


def _gateway() -> str:
    if gateway := ClientSettings.from_env().gateway:
        return gateway
    state = mesh_process.read_state(mesh_process.MeshPaths(config.home_dir()))
    return state["processes"]["gateway"]["address"] if state else f"localhost:{config.DEFAULT_GATEWAY_PORT}"


PAGE_SIZE = 500
RequestT = TypeVar("RequestT", bound=Message)


def _page(request_type: Callable[..., RequestT], filter_text: str, token: str) -> RequestT:
    return request_type(filter=filter_text, page_size=PAGE_SIZE, page_token=token)


def _term(field: str, value: str) -> str:
    """One `field = "value"` filter term."""
    return f'{field} = "{value.replace(chr(34), chr(92) + chr(34))}"'


def _and(*terms: str) -> str:
    return " AND ".join(term for term in terms if term)


def _mine(filter_text: str, mine: bool) -> str:
    """`filter_text`, narrowed to what the caller owns when `mine`."""
    return _and(filter_text, _term("owner", "me") if mine else "")


def _catalog_models(client: Client, filter_text: str) -> list[core_pb2.Model]:
    found = pages(lambda token: client.core.ListModels(_page(core_pb2.ListModelsRequest, filter_text, token)))
    return [model for page in found for model in page.models]


def _client() -> Client:
    try:
        if ClientSettings.from_env().tls_dir_raw:
            return Client(_gateway())
        state = mesh_process.read_state(mesh_process.MeshPaths(config.home_dir()))
        return Client(_gateway(), tls_dir=mesh_process.tls_dir_of(state))
    except credentials.CredentialError as error:
        raise click.ClickException(str(error)) from None


def _fail(error: grpc.RpcError) -> click.ClickException:
    message = f"{error.code().name}: {error.details()}"
    for violation in field_violations(error):
        message += f"\n  {violation.field}: {violation.description}"
    return click.ClickException(message)


def _emit(as_json: bool, payload, text: str) -> None:
    """JSON (protobuf messages in their proto3 JSON form) or the human line."""
    if as_json:
        data = (
            json_format.MessageToDict(payload, preserving_proto_field_name=True)
            if isinstance(payload, Message)
            else payload
        )
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(text)


def rpc(function):
    """Turn gRPC errors into one readable line (and a field list), exit code 1."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except grpc.RpcError as error:
            raise _fail(error) from None

    return wrapper


JSON = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
MINE = click.option("--mine", is_flag=True, help="Only what you own (what you created or started).")


@main.group()
def datasets() -> None:
    """Scenes in the catalog."""


@datasets.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--bands", required=True, help="Band names in file order, comma separated, e.g. blue,green,red,nir.")
@click.option("--sensor", default="", help="e.g. landsat-7, sentinel-2.")
@click.option("--description", default="")
@click.option("--tag", "tags", multiple=True)
@JSON
@rpc
def datasets_add(
    name: str, path: Path, bands: str, sensor: str, description: str, tags: tuple[str, ...], as_json: bool
) -> None:
    """Register the GeoTIFF at PATH as dataset NAME (resolution and footprint are read from the file)."""
    try:
        dataset = catalog.scene_dataset(
            path, name, [b.strip() for b in bands.split(",") if b.strip()], sensor, description, list(tags)
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--bands") from None
    with _client() as client:
        created = client.core.CreateDataset(core_pb2.CreateDatasetRequest(dataset=dataset))
    _emit(as_json, created, f"{created.id}  {created.name}")


@datasets.command("import-stac")
@click.option("--item", default="", help="A STAC Item JSON: a path or a file:// URI under the mesh's data roots.")
@click.option("--catalog", "catalog_uri", default="", help="A static STAC catalog or collection JSON (path or URI).")
@click.option("--api", "api_url", default="", help="A STAC API to search (its host must be allowed by the mesh).")
@click.option("--collection", "collections", multiple=True, help="With --api: a collection id (repeat for more).")
@click.option("--bbox", default="", help="With --api: west,south,east,north in degrees.")
@click.option("--datetime", "when", default="", help="With --api: e.g. 2024-06-01/2024-06-30.")
@click.option("--max-cloud", type=float, default=None, help="With --api: highest eo:cloud_cover, percent.")
@click.option("--filter", "cql2_filter", default="", help="With --api: a CQL2 filter, e.g. 'eo:cloud_cover < 10'.")
@click.option("--max-items", type=int, default=0, help="With --api: at most this many items (default 100).")
@click.option("--one-dataset/--per-item", "one_dataset", default=None, help="One dataset for all items, or one each.")
@click.option("--name", default="", help="The dataset's name, or each dataset's name prefix with --per-item.")
@click.option("--band", "bands", multiple=True, help="Keep only this band (repeat); default every band.")
@click.option("--sensor", default="", help="Default: the items' platform.")
@click.option("--description", default="")
@click.option("--tag", "tags", multiple=True)
@JSON
@rpc
def datasets_import_stac(
    item: str,
    catalog_uri: str,
    api_url: str,
    collections: tuple[str, ...],
    bbox: str,
    when: str,
    max_cloud: float | None,
    cql2_filter: str,
    max_items: int,
    one_dataset: bool | None,
    name: str,
    bands: tuple[str, ...],
    sensor: str,
    description: str,
    tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Register datasets from STAC; bands, resolution, footprint, dates and cloud cover come from the items."""
    if sum(map(bool, (item, catalog_uri, api_url))) != 1:
        raise click.UsageError("give exactly one of --item, --catalog or --api")
    try:
        box = [float(v) for v in bbox.split(",")] if bbox else []
    except ValueError:
        raise click.BadParameter("four numbers: west,south,east,north", param_hint="--bbox") from None
    request = catalog.stac_import(
        item=item, catalog=catalog_uri, api_url=api_url, collections=list(collections), bbox=box, datetime=when,
        max_cloud_cover=max_cloud, cql2_filter=cql2_filter, max_items=max_items, one_dataset=one_dataset, name=name,
        description=description, tags=list(tags), bands=list(bands), sensor=sensor,
    )  # fmt: skip
    with _client() as client:
        reply = client.core.ImportStacDatasets(request, timeout=120)
    lines = [
        f"{d.id}  {d.name:<32} {len(d.items)} item(s)  {','.join(d.bands)}  {d.resolution_m:g} m"
        for d in reply.datasets
    ]
    _emit(as_json, reply, "\n".join(lines))


@datasets.command("list")
@click.option("--filter", "filter_text", default="", help='e.g. sensor = "landsat-7" AND band = "nir"')
@MINE
@JSON
@rpc
def datasets_list(filter_text: str, mine: bool, as_json: bool) -> None:
    filter_text = _mine(filter_text, mine)
    with _client() as client:
        found = pages(lambda token: client.core.ListDatasets(_page(core_pb2.ListDatasetsRequest, filter_text, token)))
        reply = core_pb2.ListDatasetsResponse(datasets=[d for page in found for d in page.datasets])
    lines = [
        f"{d.id}  {d.name:<24} {d.sensor:<12} {','.join(d.bands)}  {d.resolution_m:g} m  {d.owner or '-'}"
        for d in reply.datasets
    ]
    _emit(as_json, reply, "\n".join(lines) or "no datasets")


@main.group()
def models() -> None:
    """Models in the catalog, and their deployments on hosting."""


@models.command("register")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tag", "tags", multiple=True)
@JSON
@rpc
def models_register(folder: Path, tags: tuple[str, ...], as_json: bool) -> None:
    """Register the model in FOLDER (its constellation.yaml, README and card.json) in the catalog."""
    from model_runtime.manifest import ManifestError

    try:
        model = catalog.model_from_folder(folder, list(tags))
    except ManifestError as error:
        raise click.ClickException(f"{folder}: {error}") from None
    with _client() as client:
        created = client.core.RegisterModel(core_pb2.RegisterModelRequest(model=model))
    _emit(as_json, created, f"{created.id}  {created.name}:{created.version}")


@models.command("list")
@MINE
@JSON
@rpc
def models_list(mine: bool, as_json: bool) -> None:
    """Catalog models with their deployment state on hosting."""
    with _client() as client:
        entries = _catalog_models(client, _mine("", mine))
        hosted = {
            (m.model_name, m.model_version): m
            for page in pages(lambda t: client.hosting.ListModels(_page(hosting_pb2.ListModelsRequest, "", t)))
            for m in page.models
        }
    rows = []
    for model in entries:
        status = hosted.get((model.name, model.version))
        deployment = state_name(status.state) if status else "not packaged"
        rows.append(
            {
                "id": model.id,
                "name": model.name,
                "version": model.version,
                "bands": list(model.input.bands),
                "deployment": deployment,
                "endpoints": [e.address for e in status.endpoints] if status else [],
                "owner": model.owner,
            }
        )
    text = "\n".join(
        f"{r['id']}  {r['name']}:{r['version']:<8} {','.join(r['bands']):<28} {r['deployment']} "
        f"{' '.join(r['endpoints'])}"
        for r in rows
    )
    _emit(as_json, rows, text or "no models")


def _find_model(client: Client, ref: str) -> core_pb2.Model:
    """A catalog model by id, NAME or NAME:VERSION (the newest registered when no version is given)."""
    if ref.startswith("mdl_"):
        return client.core.GetModel(core_pb2.GetModelRequest(id=ref))
    name, _, version = ref.partition(":")
    terms = f'name = "{name}"' + (f' AND version = "{version}"' if version else "")
    found = _catalog_models(client, terms)
    if not found:
        raise click.ClickException(
            f"no model {ref!r} in the catalog; register it with `constellation models register FOLDER`"
        )
    return found[-1]


@models.command("export-stac")
@click.argument("model_ref", metavar="MODEL")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File to write; default stdout.")
@rpc
def models_export_stac(model_ref: str, output: Path | None) -> None:
    """Write MODEL (id, NAME or NAME:VERSION) as a STAC Item with the Machine Learning Model extension."""
    from mesh.errors import InvalidArgument
    from pipeline import mlm

    with _client() as client:
        model = _find_model(client, model_ref)
    try:
        text = json.dumps(mlm.model_item(model), indent=2) + "\n"
    except InvalidArgument as error:
        raise click.ClickException(f"{model.name}:{model.version}: {error}") from None
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output} ({model.name}:{model.version})")


@models.command("import-stac")
@click.argument("item", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@JSON
@rpc
def models_import_stac(item: Path, as_json: bool) -> None:
    """Register a model from ITEM, a STAC Item with the MLM extension (its mlm:model asset is the source)."""
    with _client() as client:
        created = client.core.ImportModelFromStac(core_pb2.ImportModelFromStacRequest(item_json=item.read_text()))
    _emit(as_json, created, f"{created.id}  {created.name}:{created.version}")


@models.command("deploy")
@click.argument("model_ref", metavar="MODEL")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "docker", "local", "kubernetes", "swarm"]),
    default="auto",
    show_default=True,
)
@click.option("--replicas", default=1, show_default=True)
@JSON
@rpc
def models_deploy(model_ref: str, runtime: str, replicas: int, as_json: bool) -> None:
    """Package MODEL (id, name or name:version) if needed and deploy it, following hosting's events."""
    runtimes = {
        "auto": hosting_pb2.RUNTIME_UNSPECIFIED,
        "docker": hosting_pb2.RUNTIME_DOCKER,
        "local": hosting_pb2.RUNTIME_LOCAL,
        "kubernetes": hosting_pb2.RUNTIME_KUBERNETES,
        "swarm": hosting_pb2.RUNTIME_SWARM,
    }
    with _client() as client:
        model = _find_model(client, model_ref)
        hooks = DeployHooks(
            on_event=lambda kind, message: (
                None if as_json else click.echo(f"  {'  ' if kind == 'log' else ''}{message}")
            )
        )
        deployer = ModelDeployer(
            client.hosting,
            Target(model.name, model.version, model.source, model.card),
            hooks,
            hosting_address=client.gateway,
            runtime=runtimes[runtime],
            replicas=replicas,
        )
        try:
            status = deployer.ensure()
        except DeployFailed as error:
            raise click.ClickException(str(error)) from None
    _emit(
        as_json,
        status,
        f"{model.name}:{model.version} serving at {', '.join(e.address for e in status.endpoints)} "
        f"({hosting_pb2.Runtime.Name(status.runtime)[8:].lower()})",
    )


@models.command("watch")
@click.argument("model_ref", metavar="MODEL")
@JSON
@rpc
def models_watch(model_ref: str, as_json: bool) -> None:
    """Replay and follow MODEL's packaging and deployment events (Ctrl-C to stop)."""
    with _client() as client:
        model = _find_model(client, model_ref)
        hosted = find_hosted(client.hosting, model.name, model.version)
        if hosted is None:
            raise click.ClickException(
                f"{model.name}:{model.version} is not on hosting yet; deploy it with `constellation models deploy "
                f"{model.name}`"
            )
        for event in client.hosting.WatchDeployment(hosting_pb2.WatchDeploymentRequest(model_id=hosted.model_id)):
            _emit(
                as_json, event, f"{event.sequence:>5} {state_name(event.state):<11} {event.log_line or event.message}"
            )


@main.command()
@click.argument("prompt")
@click.option("--save", "save_as", default="", help="Store the plan as a pipeline with this name.")
@JSON
@rpc
def plan(prompt: str, save_as: str, as_json: bool) -> None:
    """Ask the agent for a pipeline that does PROMPT, e.g. "map surface water in the Olinda scene"."""
    with _client() as client:
        answer = client.agent.PlanPipeline(agent_pb2.PlanPipelineRequest(prompt=prompt))
        pipeline = None
        if save_as:
            pipeline = client.core.CreatePipeline(
                core_pb2.CreatePipelineRequest(
                    pipeline=core_pb2.Pipeline(name=save_as, description=prompt, spec=answer.spec)
                )
            )
    if as_json:
        data = json_format.MessageToDict(answer, preserving_proto_field_name=True)
        if pipeline is not None:
            data["pipeline_id"] = pipeline.id
        click.echo(json.dumps(data, indent=2))
        return
    for kind, candidates in (("dataset", answer.recommendation.datasets), ("model", answer.recommendation.models)):
        for rank, candidate in enumerate(candidates[:3], 1):
            click.echo(f"{kind} #{rank} {candidate.name:<24} {candidate.score:.2f}  {'; '.join(candidate.reasons[:2])}")
    for reason in answer.rationale:
        click.echo(f"  [{reason.block_id}] {reason.reason}")
    click.echo(
        f"saved as pipeline {pipeline.id}; run it with `constellation run {pipeline.id}`"
        if pipeline
        else "save it with --save NAME"
    )


def _find_pipeline(client: Client, ref: str) -> core_pb2.Pipeline:
    if ref.startswith("pl_"):
        return client.core.GetPipeline(core_pb2.GetPipelineRequest(id=ref))
    found = client.core.ListPipelines(core_pb2.ListPipelinesRequest(filter=f'name = "{ref}"')).pipelines
    if not found:
        raise click.ClickException(f"no pipeline {ref!r}; make one with `constellation plan PROMPT --save NAME`")
    return found[0]


def _follow(client: Client, run_id: str, as_json: bool) -> watch.RunReport:
    run = client.core.GetRun(core_pb2.GetRunRequest(id=run_id))
    spec = client.core.GetPipeline(core_pb2.GetPipelineRequest(id=run.pipeline_id)).spec
    if as_json:  # one JSON object per event, then the report
        report = watch.follow(
            client.core,
            run_id,
            lambda e: click.echo(json_format.MessageToJson(e, preserving_proto_field_name=True, indent=None)),
            spec,
        )
        click.echo(json.dumps(report.as_dict()))
        return report
    with watch.make_view([(b.id, b.WhichOneof("config") or "") for b in spec.blocks]) as view:
        report = watch.follow(client.core, run_id, view.event, spec)
    click.echo(
        f"run {run_id} {report.state}"
        + (f" ({report.failure_source}): {report.run.state_message}" if report.state != "succeeded" else "")
    )
    for output in report.run.outputs:
        click.echo(f"  {output.name:<28} {output.uri}")
    return report


@main.command()
@click.argument("pipeline_ref", metavar="PIPELINE")
@click.option(
    "--watch/--no-watch", "follow_it", default=True, show_default=True, help="Follow the run's events until it ends."
)
@JSON
@rpc
def run(pipeline_ref: str, follow_it: bool, as_json: bool) -> None:
    """Run PIPELINE (id or name): deploy its models, run the job, and follow it. Exits 1 unless it succeeds."""
    with _client() as client:
        pipeline = _find_pipeline(client, pipeline_ref)
        started = client.core.RunPipeline(core_pb2.RunPipelineRequest(pipeline_id=pipeline.id))
        if not follow_it:
            _emit(as_json, started, f"{started.id}  queued; follow it with `constellation runs watch {started.id}`")
            return
        if not as_json:
            click.echo(f"run {started.id} of {pipeline.name}")
        report = _follow(client, started.id, as_json)
    sys.exit(0 if report.state == "succeeded" else 1)


@main.group()
def runs() -> None:
    """Runs: list, watch, cancel, fetch outputs."""


@runs.command("list")
@click.option("--filter", "filter_text", default="", help='e.g. state = "failed" AND pipeline_id = "pl_..."')
@MINE
@JSON
@rpc
def runs_list(filter_text: str, mine: bool, as_json: bool) -> None:
    filter_text = _mine(filter_text, mine)
    with _client() as client:
        found = pages(lambda token: client.core.ListRuns(_page(core_pb2.ListRunsRequest, filter_text, token)))
        reply = core_pb2.ListRunsResponse(runs=[r for page in found for r in page.runs])
    lines = [
        f"{r.id}  {r.pipeline_id}  {watch.state_name(r.state):<10} {r.owner or '-':<18} {r.state_message[:80]}"
        for r in reply.runs
    ]
    _emit(as_json, reply, "\n".join(lines) or "no runs")


@runs.command("watch")
@click.argument("run_id")
@JSON
@rpc
def runs_watch(run_id: str, as_json: bool) -> None:
    """Replay RUN_ID's events and follow it live until it ends. Exits 1 unless it succeeds."""
    with _client() as client:
        report = _follow(client, run_id, as_json)
    sys.exit(0 if report.state == "succeeded" else 1)


@runs.command("cancel")
@click.argument("run_id")
@JSON
@rpc
def runs_cancel(run_id: str, as_json: bool) -> None:
    with _client() as client:
        canceled = client.core.CancelRun(core_pb2.CancelRunRequest(id=run_id))
    _emit(as_json, canceled, f"{canceled.id}  {watch.state_name(canceled.state)}")


@runs.command("outputs")
@click.argument("run_id")
@click.option(
    "--dest", type=click.Path(file_okay=False, path_type=Path), default=None, help="Copy the files into this folder."
)
@JSON
@rpc
def runs_outputs(run_id: str, dest: Path | None, as_json: bool) -> None:
    """List RUN_ID's output files, or copy them into --dest."""
    with _client() as client:
        finished = client.core.GetRun(core_pb2.GetRunRequest(id=run_id))
    from clients.storage import StorageError

    rows = []
    for output in finished.outputs:
        try:
            local = outputs.fetch(output.uri, dest) if dest is not None else None
        except StorageError as error:
            raise click.ClickException(f"{output.name}: {error}") from None
        rows.append(
            {
                "name": output.name,
                "uri": output.uri,
                "media_type": output.media_type,
                **({"path": str(local)} if local else {}),
            }
        )
    if not rows:
        raise click.ClickException(f"run {run_id} is {watch.state_name(finished.state)} and has no outputs")
    _emit(as_json, rows, "\n".join(f"{r['name']:<28} {r.get('path', r['uri'])}" for r in rows))


# --------------------------------------------------------------------------- users, keys, whoami

ROLE_CHOICE = click.Choice(["viewer", "editor", "admin"])
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _role_name(role: int) -> str:
    return identity_pb2.Role.Name(role).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def _seconds(text: str) -> int:
    """'30d', '12h', '90m', '3600s' or '3600' as seconds."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in DURATION_UNITS else (text, "s")
    if not number.isdigit() or int(number) == 0:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m or 3600s", param_hint="--expires-in")
    return int(number) * DURATION_UNITS[unit]


def _find_user(client: Client, ref: str) -> identity_pb2.User:
    """A user by id or name."""
    if ref.startswith("usr_"):
        return client.identity.GetUser(identity_pb2.GetUserRequest(id=ref))
    found = pages(
        lambda token: client.identity.ListUsers(identity_pb2.ListUsersRequest(page_size=PAGE_SIZE, page_token=token))
    )
    for user in (u for page in found for u in page.users):
        if user.name == ref:
            return user
    raise click.ClickException(f"no user is named {ref!r}; see `constellation users list`")


def _user_line(user: identity_pb2.User) -> str:
    return f"{user.id}  {user.name:<24} {_role_name(user.role):<7} {'disabled' if user.disabled else ''}".rstrip()


@main.group()
def users() -> None:
    """People who may call the mesh, each with a role (admins only)."""


@users.command("create")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, default="viewer", show_default=True)
@JSON
@rpc
def users_create(name: str, role: str, as_json: bool) -> None:
    """Add user NAME; give them a key with `constellation keys create --user NAME`."""
    user = identity_pb2.User(name=name, role=identity_pb2.Role.Value(f"ROLE_{role.upper()}"))
    with _client() as client:
        created = client.identity.CreateUser(identity_pb2.CreateUserRequest(user=user))
    _emit(as_json, created, _user_line(created))


@users.command("list")
@JSON
@rpc
def users_list(as_json: bool) -> None:
    with _client() as client:
        found = pages(
            lambda token: client.identity.ListUsers(
                identity_pb2.ListUsersRequest(page_size=PAGE_SIZE, page_token=token)
            )
        )
        reply = identity_pb2.ListUsersResponse(users=[u for page in found for u in page.users])
    _emit(as_json, reply, "\n".join(_user_line(u) for u in reply.users) or "no users")


def _update_user(ref: str, as_json: bool, role: str | None = None, disabled: bool | None = None) -> None:
    with _client() as client:
        user = _find_user(client, ref)
        request = identity_pb2.UpdateUserRequest(user=identity_pb2.User(id=user.id))
        if role is not None:
            request.user.role = identity_pb2.Role.Value(f"ROLE_{role.upper()}")
            request.update_mask.paths.append("role")
        if disabled is not None:
            request.user.disabled = disabled
            request.update_mask.paths.append("disabled")
        updated = client.identity.UpdateUser(request)
    _emit(as_json, updated, _user_line(updated))


@users.command("update")
@click.argument("user_ref", metavar="USER")
@click.option("--role", type=ROLE_CHOICE, default=None)
@click.option("--enable/--disable", "enabled", default=None, help="Let the user's keys work again, or stop them.")
@JSON
@rpc
def users_update(user_ref: str, role: str | None, enabled: bool | None, as_json: bool) -> None:
    """Change USER's (id or name) role, or enable/disable them."""
    if role is None and enabled is None:
        raise click.UsageError("say what to change: --role, --enable or --disable")
    _update_user(user_ref, as_json, role, None if enabled is None else not enabled)


@users.command("disable")
@click.argument("user_ref", metavar="USER")
@JSON
@rpc
def users_disable(user_ref: str, as_json: bool) -> None:
    """Stop every key of USER (id or name) from working; `users update USER --enable` undoes it."""
    _update_user(user_ref, as_json, disabled=True)


def _key_line(key: identity_pb2.ApiKey) -> str:
    state = "revoked" if key.HasField("revoke_time") else ""
    if not state and key.HasField("expire_time"):
        state = f"expires {key.expire_time.ToDatetime():%Y-%m-%d %H:%M} UTC"
    return f"{key.id}  {key.user_id}  {key.description:<20} {state}".rstrip()


@main.group()
def keys() -> None:
    """API keys: your own, or (admins) anyone's. A key is shown once, when it is made."""


@keys.command("create")
@click.option("--user", "user_ref", default="", help="Whose key (id or name; admins only). Default: yours.")
@click.option("--expires-in", "expires_in", default="", help="e.g. 30d, 12h, 90m. Default: never.")
@click.option("--description", default="", help="For people, e.g. 'laptop'.")
@JSON
@rpc
def keys_create(user_ref: str, expires_in: str, description: str, as_json: bool) -> None:
    """Make an API key and print it, once: the mesh keeps only a hash of it."""
    ttl_s = _seconds(expires_in) if expires_in else 0
    with _client() as client:
        user_id = _find_user(client, user_ref).id if user_ref else ""
        made = client.identity.CreateApiKey(
            identity_pb2.CreateApiKeyRequest(user_id=user_id, ttl_seconds=ttl_s, description=description)
        )
    _emit(as_json, made, f"{made.key}\n(key id {made.api_key.id}; it is not shown again)")


@keys.command("list")
@click.option("--user", "user_ref", default="", help="Whose keys (id or name; admins only). Default: yours.")
@click.option("--all", "include_inactive", is_flag=True, help="Also revoked and expired keys.")
@JSON
@rpc
def keys_list(user_ref: str, include_inactive: bool, as_json: bool) -> None:
    with _client() as client:
        user_id = _find_user(client, user_ref).id if user_ref else ""
        reply = client.identity.ListApiKeys(
            identity_pb2.ListApiKeysRequest(user_id=user_id, include_inactive=include_inactive)
        )
    _emit(as_json, reply, "\n".join(_key_line(k) for k in reply.api_keys) or "no keys")


@keys.command("revoke")
@click.argument("key_id")
@JSON
@rpc
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Stop the key KEY_ID (its public id, from `keys list`) from working."""
    with _client() as client:
        revoked = client.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=key_id))
    _emit(as_json, revoked, f"{revoked.id}  revoked")


@main.command()
@JSON
@rpc
def whoami(as_json: bool) -> None:
    """Who the mesh takes you for (your key's user and role)."""
    with _client() as client:
        me = client.identity.WhoAmI(identity_pb2.WhoAmIRequest())
    _emit(as_json, me, f"{me.name or me.subject}  {_role_name(me.role)}  ({me.subject})")


# --------------------------------------------------------------------------- the audit log


def _since(value: str) -> datetime:
    """A time from `--since`: a duration back from now (30m, 12h, 7d) or an ISO 8601 time (UTC unless it says)."""
    text = value.strip()
    if text[-1:] in DURATION_UNITS and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * DURATION_UNITS[text[-1]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter("give a duration such as 30m, 12h, 7d, or a time such as 2026-01-31T12:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@main.command()
@click.option("--user", "subject", default="", help='Only calls by this subject, e.g. "key:3f2a9c01b2d4".')
@click.option("--method", default="", help="Only calls of this method, e.g. DeleteDataset.")
@click.option("--outcome", default="", help="Only calls that ended so, e.g. OK or PERMISSION_DENIED.")
@click.option("--since", default="", help="Only calls since then: 30m, 12h, 7d, or an ISO 8601 time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="At most this many.")
@JSON
@rpc
def audit(subject: str, method: str, outcome: str, since: str, limit: int, as_json: bool) -> None:
    """The audit log, newest first: every mutating call on the mesh, who made it and how it ended (admins only)."""
    wanted = (("subject", subject), ("method", method), ("outcome", outcome))
    terms = [_term(field, value) for field, value in wanted if value]
    request = audit_pb2.ListAuditEventsRequest(filter=_and(*terms), page_size=min(limit, PAGE_SIZE))
    if since:
        request.start_time.FromDatetime(_since(since))

    def fetch(token: str) -> audit_pb2.ListAuditEventsResponse:
        request.page_token = token
        return client.audit.ListAuditEvents(request)

    with _client() as client:
        found = itertools.islice((e for page in pages(fetch) for e in page.events), limit)
        reply = audit_pb2.ListAuditEventsResponse(events=list(found))
    lines = [
        f"{e.time.ToDatetime(tzinfo=UTC):%Y-%m-%d %H:%M:%S}  {e.service:<12} {e.method:<20} {e.target_id or '-':<32} "
        f"{e.subject or '-':<18} {e.role or '-':<7} {e.outcome:<18} {e.request_id}"
        for e in reply.events
    ]
    _emit(as_json, reply, "\n".join(lines) or "no audit records")
