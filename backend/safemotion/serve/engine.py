"""Where the model runs for the HTTP app: `LocalEngine` (ModelService + MicroBatcher + JobRunner in this process),
which is also the engine inside each Ray Serve replica (safemotion.serve.ray_app: every replica is its own ingress),
or `RayEngine` calling the replicas from `safemotion serve --engine ray`. The app only needs what `Engine` lists, so
all serve the same API with the same queue limits, deadlines and lanes."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from fastapi.concurrency import run_in_threadpool

from safemotion.serve.batcher import AUDIT, INTERACTIVE, JOB, DeadlineExceeded, MicroBatcher
from safemotion.serve.jobs import JobRunner, JobSettings
from safemotion.serve.model_service import AuditTask, EditTask, GenerationTask, ModelService, motion_payloads
from safemotion.serve.settings import ServerSettings
from safemotion.serve.store import Store


class Engine(Protocol):
    """What the HTTP app asks of the model side."""

    name: str  # the served model's name
    info: dict[str, Any]  # GET /v1/models' description of it
    device: str

    async def start(self) -> None:
        """Load the model and start working (jobs included)."""

    def stop(self) -> None:
        """Stop working; unfinished job items stay pending in the database."""

    async def generate(self, task: GenerationTask, timeout: float) -> list[dict[str, Any]]:
        """The motion payloads of one request; DeadlineExceeded after `timeout` seconds."""

    async def edit(self, task: EditTask, timeout: float) -> list[dict[str, Any]]:
        """The motion payloads of one edit; ValueError when the editor refuses its source or spans."""

    async def audit(self, task: AuditTask, timeout: float) -> dict[str, Any]:
        """The audit report of one motion; ValueError when the motion or model cannot be audited."""

    def queue(self) -> dict[str, Any]:
        """The health endpoint's queue numbers."""

    def wake(self) -> None:
        """A job was created: look for work now."""

    def cancel(self, job_id: str) -> None:
        """A job was cancelled: withdraw its queued items now."""


def job_settings(settings: ServerSettings, in_flight: int) -> JobSettings:
    """The job runner's settings from the server's."""
    return JobSettings(in_flight=in_flight, lease_s=settings.claim_lease_s, max_attempts=settings.max_attempts,
                       forbid_allow=settings.forbid_allow)


class LocalEngine:
    """The model in this process, fed by one micro-batching worker thread; the job runner keeps `job_batches` full
    batches of job items queued (a Ray replica keeps one, so a job's items spread over the replicas)."""

    def __init__(self, settings: ServerSettings, store: Store, job_batches: int = 2):
        self.settings = settings
        self.store = store
        self.job_batches = job_batches

    async def start(self) -> None:
        """Load the model, then start the batcher and the job runner."""
        settings = self.settings
        self.service = await asyncio.to_thread(ModelService.load, settings.model_path(), settings.device,
                                               settings.threads, settings.precision)
        self.name, self.info, self.device = self.service.name, self.service.info, self.service.device
        self.batcher = MicroBatcher(self.service.run, settings.max_batch, settings.batch_window_ms / 1000,
                                    settings.max_queue)
        self.runner = JobRunner(self.store, lambda task, size: self.batcher.submit(task, size=size, kind=JOB),
                                self.name, job_settings(settings, self.job_batches * settings.max_batch))
        self.batcher.start()
        self.runner.start()

    def stop(self) -> None:
        """Stop the job runner, then the batcher."""
        self.runner.stop()
        self.batcher.stop()

    async def _run(self, task: Any, size: int, kind: str, timeout: float) -> Any:
        future = self.batcher.submit(task, size=size, deadline=time.monotonic() + timeout, kind=kind)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"the request did not finish within {timeout:g} s") from None

    async def generate(self, task: GenerationTask, timeout: float) -> list[dict[str, Any]]:
        """Generate on the interactive lane; the SMPL fit and encoding run in the thread pool."""
        generated = await self._run(task, task.request.variations, INTERACTIVE, timeout)
        return await run_in_threadpool(motion_payloads, generated)

    async def edit(self, task: EditTask, timeout: float) -> list[dict[str, Any]]:
        """Edit on the interactive lane, like a generation."""
        generated = await self._run(task, task.variations, INTERACTIVE, timeout)
        return await run_in_threadpool(motion_payloads, generated)

    async def audit(self, task: AuditTask, timeout: float) -> dict[str, Any]:
        """Audit on the audit lane, one motion per model batch."""
        return await self._run(task, self.batcher.max_batch, AUDIT, timeout)

    def queue(self) -> dict[str, Any]:
        """Waiting requests, capacity and batching numbers of the micro-batcher."""
        batcher = self.batcher
        return {"waiting": batcher.waiting(), "capacity": batcher.max_queue, "max_batch": batcher.max_batch,
                "batches": batcher.batches,
                "mean_batch_motions": batcher.motions / batcher.batches if batcher.batches else 0.0}

    def wake(self) -> None:
        """Let the job runner look for work now."""
        self.runner.wake()

    def cancel(self, job_id: str) -> None:
        """Withdraw the job's items from the batcher."""
        self.runner.cancel(job_id)
