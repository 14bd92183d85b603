"""The CLI's listings read every page of a List RPC, not only the first."""

from __future__ import annotations

import json

from click.testing import CliRunner

from constellation_sdk import cli
from tests.catalog_data import add_dataset, register


def test_listings_show_every_page(core, core_server, monkeypatch) -> None:
    monkeypatch.setattr(cli, "PAGE_SIZE", 2)
    monkeypatch.setenv("CONSTELLATION_GATEWAY", f"127.0.0.1:{core_server.port}")
    names = [f"scene-{i}" for i in range(5)]
    for name in names:
        add_dataset(core, name)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        register(core, version=version)

    listed = CliRunner().invoke(cli.main, ["datasets", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(d["name"] for d in json.loads(listed.output)["datasets"]) == names

    found = cli._find_model(cli.Client(f"127.0.0.1:{core_server.port}"), "ndwi-water")
    assert found.version == "1.2.0"
