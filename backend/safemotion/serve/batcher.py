"""Dynamic micro-batching: requests that arrive close together share one model batch, run by ONE worker thread.

    batcher = MicroBatcher(service.run, max_batch=16, window_s=0.01, max_queue=64)
    batcher.start()
    future = batcher.submit(task, size=variations, deadline=time.monotonic() + 120)   # QueueFull when full
    result = future.result()          # or `await asyncio.wrap_future(future)` in the event loop

Three lanes feed the worker, served in this order: interactive requests and motion audits (each bounded by
`max_queue`; QueueFull carries a Retry-After estimate), then batch-job items (the job runner bounds how many it keeps
queued), so audits never hold up generation requests. The worker takes the head of the first non-empty lane, then
keeps adding tasks of the same kind, interactive first, until the batch holds `max_batch` motions or `window_s` has
passed since it began gathering; a task larger than `max_batch` runs alone. `max_batch=1` serves one request at a
time. Tasks whose future was cancelled (the client went away) or whose deadline passed are dropped before the model
sees them, and a cancelled task gives up its place in a full lane. The handler gets the tasks of one batch and returns one result per
task; a result that is an Exception fails only its own task, and if the handler raises, every task of the batch fails
with that error.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("safemotion.serve.batcher")

INTERACTIVE = "interactive"
AUDIT = "audit"
JOB = "job"
BOUNDED = (INTERACTIVE, AUDIT)


class QueueFull(Exception):
    """The interactive lane is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the generation queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The task's deadline passed before the model reached it."""


@dataclass
class Work:
    """A queued task with its size in motions, its deadline (time.monotonic) and the future of its result."""

    task: Any
    size: int
    deadline: float | None
    kind: str
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Gathers submitted tasks into batches for `handler`, run on one worker thread."""

    def __init__(self, handler: Callable[[list[Any]], list[Any]], max_batch: int = 16, window_s: float = 0.01,
                 max_queue: int = 64, name: str = "model-worker"):
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be ≥ 1 and window_s "
                             f"({window_s}) ≥ 0")
        self.handler = handler
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self._lanes: dict[str, deque[Work]] = {INTERACTIVE: deque(), AUDIT: deque(), JOB: deque()}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._seconds_per_motion = 0.1  # running estimate for Retry-After
        self.busy = False  # the handler is running a batch
        self.batches = 0
        self.motions = 0

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running batch, fail every queued task with RuntimeError and join the worker."""
        with self._cond:
            self._stopping = True
            left = [work for lane in self._lanes.values() for work in lane]
            for lane in self._lanes.values():
                lane.clear()
            self._cond.notify_all()
        for work in left:
            if work.future.set_running_or_notify_cancel():
                work.future.set_exception(RuntimeError("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, task: Any, size: int = 1, deadline: float | None = None, kind: str = INTERACTIVE) -> Future:
        """Queue a task of `size` motions; QueueFull when its lane (interactive or audit) holds max_queue tasks."""
        work = Work(task, max(int(size), 1), deadline, kind)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            lane = self._lanes[kind]
            if kind in BOUNDED and len(lane) >= self.max_queue:
                self._drop_cancelled_locked(lane)  # a request that gave up holds no place
                if len(lane) >= self.max_queue:
                    raise QueueFull(self._retry_after_locked())
            lane.append(work)
            self._cond.notify()
        return work.future

    def waiting(self, kind: str = INTERACTIVE) -> int:
        """Tasks waiting in a lane."""
        with self._cond:
            return len(self._lanes[kind])

    @staticmethod
    def _drop_cancelled_locked(lane: deque[Work]) -> None:
        kept = [work for work in lane if not work.future.cancelled()]
        lane.clear()
        lane.extend(kept)

    def _retry_after_locked(self) -> int:
        motions = sum(work.size for lane in self._lanes.values() for work in lane)
        return max(1, math.ceil(motions * self._seconds_per_motion))

    # ------------------------------------------------------------------------------------------ worker

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._run(batch)

    def _next(self) -> deque[Work] | None:
        """The lane whose head is served next (interactive first), dropping cancelled heads."""
        for lane in self._lanes.values():
            while lane and lane[0].future.cancelled():
                lane.popleft()
            if lane:
                return lane
        return None

    def _gather(self) -> list[Work] | None:
        with self._cond:
            while (lane := self._next()) is None:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [lane.popleft()]
            size = batch[0].size
            kind = type(batch[0].task)
            window_end = time.monotonic() + self.window_s
            while size < self.max_batch and not self._stopping:
                lane = self._next()
                if lane is None:
                    remaining = window_end - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    continue
                head = lane[0]
                if type(head.task) is not kind or size + head.size > self.max_batch:
                    break
                batch.append(lane.popleft())
                size += head.size
            return batch

    def _run(self, batch: list[Work]) -> None:
        now = time.monotonic()
        live = []
        for work in batch:
            if not work.future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            if work.deadline is not None and now > work.deadline:
                work.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
                continue
            live.append(work)
        if not live:
            return
        started = time.perf_counter()
        self.busy = True
        try:
            results = self.handler([work.task for work in live])
            if len(results) != len(live):
                raise RuntimeError(f"the batch handler returned {len(results)} results for {len(live)} tasks")
        except Exception as err:  # noqa: BLE001 - the batch's callers get the error; the worker carries on
            log.exception("batch failed", extra={"tasks": len(live)})
            for work in live:
                work.future.set_exception(err)
            return
        finally:
            self.busy = False
        elapsed = time.perf_counter() - started
        motions = sum(work.size for work in live)
        with self._cond:
            self.batches += 1
            self.motions += motions
            self._seconds_per_motion = 0.8 * self._seconds_per_motion + 0.2 * elapsed / motions
        log.debug("batch", extra={"tasks": len(live), "motions": motions, "seconds": round(elapsed, 4)})
        for work, result in zip(live, results):
            if isinstance(result, Exception):
                work.future.set_exception(result)
            else:
                work.future.set_result(result)
