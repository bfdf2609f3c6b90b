"""Batch jobs: a thread that feeds pending job items into the micro-batcher's job lane and stores each result.

The database is the job queue. The runner keeps up to `in_flight` items queued or running; each finished item is
written (result + audit entries, one transaction) as soon as its batch completes. After a restart the runner simply
finds the items still pending and carries on: finished items are never recomputed, lost ones (running at the crash)
run again. Cancelling a job marks its pending items cancelled and withdraws the ones still queued in the batcher; an
item already running finishes but is not stored. Jobs made for another model wait until a server with that model
runs; `allow` items fail when the server was restarted with --forbid-allow.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait

from safemotion.generate import GenerationRequest
from safemotion.serve.batcher import JOB, MicroBatcher
from safemotion.serve.model_service import GenerationTask, motion_payloads
from safemotion.serve.store import AuditEntry, JobItem, Store

log = logging.getLogger("safemotion.serve.jobs")

POLL_S = 0.25  # how often an idle runner looks for new or resumed work


class JobRunner:
    """Runs the pending items of every active job of the served model, oldest job first."""

    def __init__(self, store: Store, batcher: MicroBatcher, model: str, in_flight: int, forbid_allow: bool = False):
        self.store = store
        self.batcher = batcher
        self.model = model
        self.in_flight = max(in_flight, 1)
        self.forbid_allow = forbid_allow
        self._flying: dict[Future, JobItem] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> None:
        """Start the runner thread (resuming every unfinished job)."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking items and join the thread; queued items stay pending in the database."""
        self._stopping = True
        self._wake.set()
        with self._lock:
            for future in self._flying:
                future.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look for work now (a job was created)."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Withdraw a cancelled job's items that are still waiting in the batcher."""
        with self._lock:
            for future, item in self._flying.items():
                if item.job_id == job_id:
                    future.cancel()

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._fill()
                with self._lock:
                    flying = list(self._flying)
                if flying:
                    done, _ = wait(flying, timeout=POLL_S, return_when=FIRST_COMPLETED)
                    for future in done:
                        self._finish(future)
                else:
                    self._wake.wait(POLL_S)
                    self._wake.clear()
            except Exception:  # noqa: BLE001 - a database hiccup must not end job processing
                log.exception("job runner error; retrying")
                self._wake.wait(1.0)

    def _fill(self) -> None:
        with self._lock:
            room = self.in_flight - len(self._flying)
            skip = {(item.job_id, item.index) for item in self._flying.values()}
        if room <= 0 or self._stopping:
            return
        for item in self.store.pending_items(self.model, room, skip):
            if item.policy == "allow" and self.forbid_allow:
                self.store.fail_item(item.job_id, item.index, "this server now forbids the 'allow' policy")
                continue
            request = GenerationRequest(item.prompt, item.seconds, item.seed, item.variations)
            future = self.batcher.submit(GenerationTask(request, item.policy), size=item.variations, kind=JOB)
            with self._lock:
                self._flying[future] = item

    def _finish(self, future: Future) -> None:
        with self._lock:
            item = self._flying.pop(future)
        if future.cancelled():
            return  # job cancelled or server stopping: the item's state is already right in the database
        error = future.exception()
        if error is not None:
            if not self._stopping:
                self.store.fail_item(item.job_id, item.index, str(error))
                log.warning("job item failed", extra={"job": item.job_id, "item": item.index, "error": str(error)})
            return
        motions = motion_payloads(future.result())
        entries = [AuditEntry(username=item.owner, role=item.role, event="job_item", model=self.model,
                              prompt=item.prompt, policy=item.policy, seed=m["seed"], variation=m["variation"],
                              job_id=item.job_id, **safety_fields(m["safety"]))
                   for m in motions]
        if self.store.finish_item(item.job_id, item.index, json.dumps(motions), entries):
            log.info("job item done", extra={"job": item.job_id, "item": item.index, "motions": len(motions)})


def safety_fields(safety: dict | None) -> dict:
    """decision / flagged / hit_ratio / signals (JSON) / reason of an audit entry from a motion's safety record (None:
    not screened)."""
    if safety is None:
        return {"decision": "unscreened", "flagged": False, "hit_ratio": None, "signals": None, "reason": None}
    return {"decision": safety["decision"], "flagged": safety["flagged"], "hit_ratio": safety["hit_ratio"],
            "signals": json.dumps(safety.get("signals", [])), "reason": safety.get("reason")}
