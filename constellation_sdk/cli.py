"""The `constellation` command: run the mesh locally and inspect it."""

from __future__ import annotations

import json
import sys

import click

from constellation_sdk import mesh_process


@click.group()
def main() -> None:
    """Constellation: ML models over satellite imagery, as a gRPC mesh."""


@main.command()
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, help="Seconds to wait for each part to answer.")
def up(timeout_s: float) -> None:
    """Start core, hosting, orchestrator, agent and the Envoy gateway in the background."""
    try:
        state = mesh_process.up(timeout_s=timeout_s)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"mesh running (state and logs in {state['home']})")
    for name, entry in state["processes"].items():
        click.echo(f"  {name:<13} {entry['address']:<22} pid {entry['pid']}")
    gateway = state["processes"]["gateway"]["address"]
    click.echo(f"gateway: grpcurl -plaintext {gateway} list   |   Client(gateway=\"{gateway}\")")
    click.echo(f"console: http://{gateway}/   (build it with `make web`)")


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
