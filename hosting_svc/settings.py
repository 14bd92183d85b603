"""Hosting's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostingSettings:
    home: Path
    base_image: str = "constellation/base:bookworm"
    ready_timeout_s: float = 60.0
    monitor_interval_s: float = 1.0
