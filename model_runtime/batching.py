"""Server-side dynamic batching: concurrent requests become one predict() call.

No worker thread: the first caller to find the batcher idle becomes the
leader. It waits up to `max_queue_delay_ms` for more requests (Triton's
semantics; 0 means take only what is already queued) or until the queue
holds `max_batch_size` tiles, whichever comes first, takes queued requests
from the front up to `max_batch_size` tiles, runs predict once on their
concatenation and hands every caller its slice; then leadership passes to a
waiting caller whose request is still queued. Requests that arrive while
predict runs merge into the next batch. A lone caller runs predict in its own
thread with no hand-off (thread hand-offs cost milliseconds under the GIL).
A request that fills a batch on its own skips the queue; one larger than
`max_batch_size` runs as consecutive predict() calls of at most that many
tiles, so predict() never sees more than `max_batch_size` tiles. At most
`max_parallel` predict() calls run at once, whichever path they come from
(model_runtime.admission derives the number): the others wait their turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


class _Request:
    __slots__ = ("batch", "done", "error", "result")

    def __init__(self, batch: np.ndarray) -> None:
        self.batch = batch
        self.done = False
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class Batcher:
    def __init__(self, predict: Predict, max_batch_size: int, max_queue_delay_ms: float, max_parallel: int = 1) -> None:
        self._model_predict = predict
        self._slots = threading.BoundedSemaphore(max_parallel)
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_queue_delay_ms / 1000
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._leading = False

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.shape[0] == self.max_batch_size:
            return self._predict(batch)
        if batch.shape[0] > self.max_batch_size:
            return self._in_chunks(batch)
        mine = _Request(batch)
        with self._cond:
            self._queue.append(mine)
            self._cond.notify_all()  # a gathering leader may now have a full batch
        while True:
            with self._cond:
                while not mine.done and self._leading:
                    self._cond.wait()
                if mine.done:
                    break
                self._leading = True
                self._gather(mine)
                taken = self._take()
            self._run(taken)
        if mine.error is not None:
            raise mine.error
        if mine.result is None:
            raise RuntimeError("a batch ended with neither a result nor an error")
        return mine.result

    def _predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._slots:
            return self._model_predict(batch)

    def _in_chunks(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        parts = [
            self._predict(batch[i : i + self.max_batch_size]) for i in range(0, batch.shape[0], self.max_batch_size)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _queued_tiles(self) -> int:
        return sum(r.batch.shape[0] for r in self._queue)

    def _gather(self, first: _Request) -> None:
        """Wait (lock released) up to the queue delay for the batch to fill."""
        deadline = time.perf_counter() + self.max_delay_s
        while self._queued_tiles() < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take(self) -> list[_Request]:
        taken, size = [], 0
        shape = self._queue[0].batch.shape[1:]
        while self._queue:
            candidate = self._queue[0]
            if candidate.batch.shape[1:] != shape or size + candidate.batch.shape[0] > self.max_batch_size:
                break
            taken.append(self._queue.pop(0))
            size += candidate.batch.shape[0]
        return taken

    def _run(self, taken: list[_Request]) -> None:
        try:
            if len(taken) == 1:
                merged = taken[0].batch
            else:
                merged = np.concatenate([r.batch for r in taken])
                merged.flags.writeable = False  # like a single request's zero-copy view
            outputs = self._predict(merged)
            start = 0
            for request in taken:
                end = start + request.batch.shape[0]
                request.result = {name: value[start:end] for name, value in outputs.items()}
                start = end
        except BaseException as error:  # handed to every caller in the batch
            for request in taken:
                request.error = error
        with self._cond:
            for request in taken:
                request.done = True
            self._leading = False
            self._cond.notify_all()

    def close(self) -> None:
        """Nothing to stop: callers run batches in their own threads."""
