"""Write docs/settings.md from the settings classes: every environment variable the mesh reads, its default and meaning.

python scripts/settings_doc.py           # rewrite the page
python scripts/settings_doc.py --check   # exit 1 when the page is stale (make lint)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

from mesh.config import EnvSettings

PAGE = ROOT / "docs" / "settings.md"
# (title, module, class) in the order the page shows them.
CLASSES = [
    ("Every service (bootstrap)", "mesh.config", "Settings"),
    ("Core", "core_svc.settings", "CoreSettings"),
    ("Core and orchestrator: where scenes and exports may lie", "clients.roots", "StorageRoots"),
    ("Gateway and console", "gateway.settings", "GatewaySettings"),
    ("Gateway: the map's tile server", "gateway.settings", "TileSettings"),
    ("Hosting", "hosting_svc.settings", "HostingSettings"),
    ("Hosting: the Hugging Face hub (read at each hf:// fetch)", "hosting_svc.settings", "HubSettings"),
    ("Orchestrator", "orchestrator_svc.settings", "OrchestratorSettings"),
    ("Agent", "agent_svc.settings", "AgentSettings"),
    ("SDK and CLI", "constellation_sdk.settings", "ClientSettings"),
]


def _default(field: object) -> str:
    value = getattr(field, "default", None)
    if value in ("", None):
        return "(empty)"
    return f"`{value}`"


def render() -> str:
    lines = [
        "# Settings",
        "",
        "Generated from the settings classes by `python scripts/settings_doc.py`; `make lint` fails when it is stale.",
        "Every service reads its variables once at start-up; an empty variable counts as unset. A value that does not",
        "fit stops the service with a message naming the variable.",
    ]
    for title, module, name in CLASSES:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, EnvSettings), f"{module}.{name} is not an EnvSettings"
        lines += [
            "",
            f"## {title}",
            "",
            f"`{module}.{name}`",
            "",
            "| variable | default | meaning |",
            "| --- | --- | --- |",
        ]
        for field_name, variable in cls.env_names().items():
            field = cls.model_fields[field_name]
            lines.append(f"| `{variable}` | {_default(field)} | {(field.description or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/settings.md is not what the classes say")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is stale: run python scripts/settings_doc.py (or make format)")
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
