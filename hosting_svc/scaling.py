"""Scaling with demand: when to add a replica of a deployed model and when to remove one.

The monitor polls every replica's health, and each answer carries the model server's load
(model_runtime.admission.Load: tiles admitted, its limit, requests refused since start). `Scaler`
turns those polls into a decision per model:

- busy: the replicas together hold at least `scale_queue_share` of the tiles they admit, or refused a
  request since the last poll; busy at every poll for `scale_up_after_s` -> one replica more;
- idle: no tile admitted and nothing refused; idle at every poll for `scale_down_after_s` -> one fewer;
- anything between resets both windows.

Within the model's bounds: never below the replicas it was deployed with, never above its manifest's
`resources.max_replicas` (or hosting's `max_replicas` setting when the manifest names none). Pure: the
monitor acts on the decisions (monitor.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hosting_svc.domain import HostedModel
from hosting_svc.settings import HostingSettings
from model_runtime.admission import Load


@dataclass
class Decision:
    change: int  # +1 one replica more, -1 one fewer, 0 none
    reason: str = ""


@dataclass
class _Track:
    busy_since: float | None = None
    idle_since: float | None = None
    refused_seen: dict[str, int] = field(default_factory=dict)  # address -> its refused count at the last poll
    refused_in_window: int = 0


def bounds(model: HostedModel, settings: HostingSettings) -> tuple[int, int]:
    """(fewest, most) replicas: the deployment's count, up to the manifest's or hosting's ceiling."""
    low = max(model.replicas, 1)
    ceiling = model.manifest.get("resources", {}).get("max_replicas") or settings.max_replicas
    return low, max(low, int(ceiling))


class Scaler:
    def __init__(self) -> None:
        self._tracks: dict[str, _Track] = {}

    def forget(self, model_id: str) -> None:
        """Start the windows afresh (the model was redeployed, stopped or scaled)."""
        self._tracks.pop(model_id, None)

    def decide(
        self, model: HostedModel, loads: dict[str, Load | None], now: float, settings: HostingSettings
    ) -> Decision:
        """`loads`: each replica's address -> the load it reported at this poll (None: no report)."""
        track = self._tracks.setdefault(model.id, _Track())
        reports = {address: load for address, load in loads.items() if load is not None}
        if not reports:
            self.forget(model.id)
            return Decision(0)
        refused = 0
        for address, load in reports.items():
            before = track.refused_seen.get(address, load.refused)
            refused += load.refused - before if load.refused >= before else load.refused  # a restart resets it
        track.refused_seen = {address: load.refused for address, load in reports.items()}
        admitted = sum(load.admitted for load in reports.values())
        limit = sum(load.limit for load in reports.values())
        low, high = bounds(model, settings)
        count = len(loads)
        if refused or admitted >= settings.scale_queue_share * limit:
            track.idle_since = None
            if track.busy_since is None:
                track.busy_since, track.refused_in_window = now, 0
            track.refused_in_window += refused
            if now - track.busy_since >= settings.scale_up_after_s and count < high:
                reason = (
                    f"queue {admitted}/{limit} tiles, {track.refused_in_window} request(s) refused "
                    f"in {now - track.busy_since:.0f} s"
                )
                self.forget(model.id)
                return Decision(+1, reason)
        elif admitted == 0:
            track.busy_since = None
            if track.idle_since is None:
                track.idle_since = now
            if now - track.idle_since >= settings.scale_down_after_s and count > low:
                reason = f"idle for {now - track.idle_since:.0f} s"
                self.forget(model.id)
                return Decision(-1, reason)
        else:
            track.busy_since = track.idle_since = None
        return Decision(0)
