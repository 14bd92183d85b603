"""The runs waiting for a place: at most `limit` runs run at once, the others start in submission order.

A run enters the queue when it is submitted (or when core resumes it still queued) and holds a place
from the moment its driver's turn comes until the driver ends. Runs core resumes past the queue (already
starting or launched) take a place without waiting, even beyond the limit: their work is under way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

WAKE_S = 1.0  # a waiting driver checks `stop` at least this often


class RunQueue:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._changed = threading.Condition()
        self._waiting: list[str] = []  # in submission order
        self._running: set[str] = set()

    def enter(self, run_id: str) -> None:
        with self._changed:
            if run_id not in self._waiting and run_id not in self._running:
                self._waiting.append(run_id)

    def wait_turn(self, run_id: str, on_position: Callable[[int], None], stop: Callable[[], bool]) -> bool:
        """Blocks until `run_id` holds a place (True) or `stop()` (False, and the run leaves the queue).
        `on_position(n)` hears each new position while it waits: n runs start before it."""
        announced = -1
        while True:
            with self._changed:
                while True:
                    if stop():
                        self._discard(run_id)
                        return False
                    if run_id not in self._waiting:  # never queued: resumed past the queue
                        self._running.add(run_id)
                        return True
                    position = self._waiting.index(run_id)
                    if position == 0 and len(self._running) < self.limit:
                        self._waiting.pop(0)
                        self._running.add(run_id)
                        self._changed.notify_all()
                        return True
                    if position != announced:
                        break
                    self._changed.wait(WAKE_S)
            on_position(position)  # outside the lock: it writes an event
            announced = position

    def leave(self, run_id: str) -> None:
        """The run's driver ended: its place goes to the next run."""
        with self._changed:
            self._discard(run_id)

    def wake(self) -> None:
        """Waiting drivers check `stop` now (a cancel, core stopping)."""
        with self._changed:
            self._changed.notify_all()

    def _discard(self, run_id: str) -> None:
        if run_id in self._waiting:
            self._waiting.remove(run_id)
        self._running.discard(run_id)
        self._changed.notify_all()
