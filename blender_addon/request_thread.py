"""Server requests off Blender's main thread: one daemon thread per operation runs its calls one after another.

bpy is not thread-safe, so a call run here gets plain values (a payload dict, a BackendClient, a threading.Event) and
returns plain values; it never touches bpy data. The main thread checks `Future.done()` from its timer and writes the
scene itself. Calls run in the order they were queued (a cancel request queued after a poll runs once that poll has
answered, on the same HTTP session). The thread is a daemon, so quitting Blender never waits for a request in flight,
and it ends after `close()` once the calls queued before it have run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

BLOCKING_STEP_S = 0.02  # background mode and scripts: how often a blocking loop looks for the thread's answers


class RequestThread:
    """A daemon thread that runs queued calls in order; each call's outcome comes back as a Future."""

    def __init__(self, name: str):
        self._calls: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, function: Callable[..., Any], *args: Any) -> Future:
        """Queue `function(*args)` (it must not touch bpy) and return the Future of its result or exception."""
        future: Future = Future()
        self._calls.put((future, function, args))
        return future

    def close(self) -> None:
        """End the thread once the calls queued so far have run (calls queued later never run)."""
        self._calls.put(None)

    @property
    def alive(self) -> bool:
        """Whether the thread still runs (a call in flight or queued, or not closed yet)."""
        return self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the thread to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            entry = self._calls.get()
            if entry is None:
                return
            future, function, args = entry
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as err:  # handed to the main thread, which raises it there
                future.set_exception(err)
