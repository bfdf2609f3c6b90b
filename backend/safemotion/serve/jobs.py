"""Batch jobs: a thread that claims pending job items, feeds them to the model and stores each result.

The database is the job queue. The runner claims up to `in_flight` items at a time (Store.claim_items: no other server
or Ray Serve replica computes them meanwhile), renews its claims while they run, and writes each finished item
(result + audit entries, one transaction) as soon as its batch completes. After a crash its claims run out after the
lease and whichever server claims them next computes them again; finished items are never recomputed. A result the
database refuses (a full disk, say) gives the claim back with the reason, and the item fails with it once its
attempts are used up, so nothing is recomputed forever and the runner carries on when the database works again.
Cancelling a job marks its pending items cancelled; the runner withdraws the ones it still has queued (at once on the
server that got the DELETE, within a poll elsewhere), and an item already running finishes but is not stored. Jobs
made for another model wait until a server with that model runs; `allow` items fail when the server was restarted
with --forbid-allow.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from safemotion.generate import GenerationRequest
from safemotion.serve.model_service import GenerationTask, motion_payloads
from safemotion.serve.store import AuditEntry, JobItem, Store

log = logging.getLogger("safemotion.serve.jobs")

POLL_S = 0.25  # how often an idle runner looks for new, resumed or cancelled work


@dataclass(frozen=True)
class JobSettings:
    """How a runner shares the queue with other servers."""

    in_flight: int = 32  # items claimed and queued for the model at once
    lease_s: float = 30.0  # a claim not renewed for this long is taken to be a dead server's
    max_attempts: int = 3  # claims of one item before it fails
    forbid_allow: bool = False


def worker_id() -> str:
    """A name for this process's claims, unique across machines and restarts."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    """Runs the pending items of every active job of the served model; `submit(task, size)` queues a task for the
    model and returns the Future of its list of Generated."""

    def __init__(self, store: Store, submit: Callable[[GenerationTask, int], Future], model: str,
                 settings: JobSettings = JobSettings()):
        self.store = store
        self.submit = submit
        self.model = model
        self.settings = settings
        self.worker = worker_id()
        self._flying: dict[Future, JobItem] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> None:
        """Start the runner thread (resuming every unfinished job)."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking items, join the thread and give back the claims of items not finished."""
        self._stopping = True
        self._wake.set()
        with self._lock:
            for future in self._flying:
                future.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            self.store.release_claims(self.worker)
        except Exception as err:  # noqa: BLE001 - the claims then run out after the lease
            log.warning("could not give back job claims", extra={"error": str(err)})

    def wake(self) -> None:
        """Look for work now (a job was created)."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Withdraw a cancelled job's items that are still waiting for the model."""
        with self._lock:
            for future, item in self._flying.items():
                if item.job_id == job_id:
                    future.cancel()

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._look_after_claims()
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
            except Exception as err:  # noqa: BLE001 - a database hiccup must not end job processing
                log.warning("job runner error; retrying in 1 s", extra={"error": str(err)})
                self._wake.wait(1.0)

    def _look_after_claims(self) -> None:
        """Renew this runner's claims (a third of the lease apart) and withdraw items of jobs cancelled elsewhere."""
        with self._lock:
            jobs = {item.job_id for item in self._flying.values()}
        if not jobs:
            return
        if time.monotonic() - self._renewed > self.settings.lease_s / 3:
            self.store.renew_claims(self.worker)
            self._renewed = time.monotonic()
        for job_id in self.store.cancelled_jobs(jobs):
            self.cancel(job_id)

    def _fill(self) -> None:
        with self._lock:
            room = self.settings.in_flight - len(self._flying)
        if room <= 0 or self._stopping:
            return
        for item in self.store.claim_items(self.model, self.worker, room, self.settings.lease_s,
                                           self.settings.max_attempts):
            if item.policy == "allow" and self.settings.forbid_allow:
                self.store.fail_item(item.job_id, item.index, "this server now forbids the 'allow' policy")
                continue
            request = GenerationRequest(item.prompt, item.seconds, item.seed, item.variations, item.foot_cleanup)
            future = self.submit(GenerationTask(request, item.policy), item.variations)
            with self._lock:
                self._flying[future] = item
            self._renewed = time.monotonic()

    def _finish(self, future: Future) -> None:
        with self._lock:
            item = self._flying.pop(future)
        if future.cancelled():
            return  # job cancelled or server stopping: the item's state is already right in the database
        error = future.exception()
        if error is not None:
            if not self._stopping:
                self.store.fail_item(item.job_id, item.index, str(error), self.worker)
                log.warning("job item failed", extra={"job": item.job_id, "item": item.index, "error": str(error)})
            return
        motions = motion_payloads(future.result())
        entries = [AuditEntry(username=item.owner, role=item.role, event="job_item", model=self.model,
                              prompt=item.prompt, policy=item.policy, seed=m["seed"], variation=m["variation"],
                              job_id=item.job_id, **safety_fields(m["safety"]))
                   for m in motions]
        try:
            stored = self.store.finish_item(item.job_id, item.index, json.dumps(motions), entries, self.worker)
        except Exception as err:  # noqa: BLE001 - the database refused the result: give the item back, say why
            self._store_failed(item, err)
            return
        if stored:
            log.info("job item done", extra={"job": item.job_id, "item": item.index, "motions": len(motions)})

    def _store_failed(self, item: JobItem, err: Exception) -> None:
        reason = f"the result could not be stored: {str(getattr(err, 'orig', None) or err).splitlines()[0]}"
        log.warning("job item not stored", extra={"job": item.job_id, "item": item.index, "error": reason})
        try:
            self.store.release_item(item.job_id, item.index, self.worker, reason)
        except Exception:  # noqa: BLE001 - then the claim runs out after the lease
            pass
        self._wake.wait(1.0)  # give the database a moment before claiming more


def safety_fields(safety: dict | None) -> dict:
    """decision / flagged / hit_ratio / signals (JSON) / reason of an audit entry from a motion's safety record (None:
    not screened)."""
    if safety is None:
        return {"decision": "unscreened", "flagged": False, "hit_ratio": None, "signals": None, "reason": None}
    return {"decision": safety["decision"], "flagged": safety["flagged"], "hit_ratio": safety["hit_ratio"],
            "signals": json.dumps(safety.get("signals", [])), "reason": safety.get("reason")}
