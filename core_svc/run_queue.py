"""The runs waiting for a place: at most `limit` runs run at once, and at most `per_user` of one user's;
the others start in submission order.

A run enters the queue when it is submitted (or when core resumes it still queued) and holds a place
from the moment its driver's turn comes until the driver ends. The first waiting run whose user is
under `per_user` goes next, so one user's batch cannot hold every place while another user waits. Runs
core resumes past the queue (already starting or launched) take a place without waiting, even beyond
the limits: their work is under way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

WAKE_S = 1.0  # a waiting driver checks `stop` at least this often


class RunQueue:
    def __init__(self, limit: int, per_user: int = 0) -> None:
        self.limit = limit
        self.per_user = per_user if 0 < per_user < limit else 0  # 0: none of its own
        self._changed = threading.Condition()
        self._waiting: list[str] = []  # in submission order
        self._running: set[str] = set()
        self._users: dict[str, str] = {}  # run id -> the user who started it ("" for none)

    def enter(self, run_id: str, user: str = "") -> None:
        with self._changed:
            if run_id not in self._waiting and run_id not in self._running:
                self._waiting.append(run_id)
                self._users[run_id] = user

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
                    capped = self._capped_users()
                    ahead = self._ahead(run_id, capped)
                    if ahead == 0 and len(self._running) < self.limit and self._users[run_id] not in capped:
                        self._waiting.remove(run_id)
                        self._running.add(run_id)
                        self._changed.notify_all()
                        return True
                    if ahead != announced:
                        break
                    self._changed.wait(WAKE_S)
            on_position(ahead)  # outside the lock: it writes an event
            announced = ahead

    def _capped_users(self) -> set[str]:
        """Users who hold `per_user` places (lock held)."""
        if not self.per_user:
            return set()
        running = [self._users.get(r, "") for r in self._running]
        return {user for user in set(running) if running.count(user) >= self.per_user}

    def _ahead(self, run_id: str, capped: set[str]) -> int:
        """Waiting runs that start before `run_id`: those submitted earlier whose user is under the per-user
        limit, or every one submitted earlier while its own user is at it (lock held)."""
        earlier = self._waiting[: self._waiting.index(run_id)]
        if self._users[run_id] in capped:
            return len(earlier)
        return sum(self._users[r] not in capped for r in earlier)

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
        self._users.pop(run_id, None)
        self._changed.notify_all()
