"""Scale-out on Ray Serve: each model replica is also the HTTP ingress (the same FastAPI app as `safemotion serve`).

    safemotion serve --engine ray --replicas 2 --db postgresql+psycopg://... [--ray-address auto]
    serve run safemotion.serve.ray_app:build_app model=... db_url=... replicas=2   (or a Serve config file:
                                                                                    packaging/ray/serve_config.yaml)

`SafeMotionModel` is one Serve deployment of N replicas with the FastAPI app as its ingress (`@serve.ingress`), so
Serve's HTTP proxy hands each request straight to a replica: no separate ingress deployment and no second Ray hop.
The app's engine in a replica is a `ReplicaEngine`: the model loaded once (one GPU where `num_gpus` > 0, torch on
one thread), Serve's @serve.batch in front of it, and a JobRunner on the shared database. Every replica serves every
endpoint, since jobs, keys and the audit log live in that database (PostgreSQL once a second node joins). Job items
are claimed atomically (store.Store.claim_items), so a batch job's items spread over the replicas, and when Ray kills
or loses a replica mid-item its claims run out after the lease and another replica (or its replacement) computes them
once more; a dead replica cannot store a result it no longer holds. Serve restarts replicas that die.

`safemotion serve --engine ray` deploys the same replicas without an HTTP route and serves the API from uvicorn in
its own process, calling them through a deployment handle (`RayEngine`).
"""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from safemotion.serve.app import create_app
from safemotion.serve.batcher import DeadlineExceeded
from safemotion.serve.engine import job_settings
from safemotion.serve.jobs import JobRunner
from safemotion.serve.model_service import AuditTask, EditTask, GenerationTask, ModelService, motion_payloads
from safemotion.serve.settings import ServerSettings
from safemotion.serve.store import Store

APP_NAME = "safemotion"
MODEL_DEPLOYMENT = "SafeMotionModel"


class ReplicaEngine:
    """The app's engine (serve/engine.py) inside a Serve replica: the model on one thread behind Serve's
    @serve.batch, and this replica's share of the jobs.

    A batch is formed only while the model is free: requests that arrive during a batch wait at a gate and enter
    Serve's batch queue together when it ends. (Serve forms each batch `batch_window_ms` after its first request and
    queues it behind the running one, so a closed loop of clients otherwise splits into many small batches.)"""

    def __init__(self, settings: ServerSettings, store: Store):
        self.settings = settings
        self.store = store
        self.batches = 0
        self.motions = 0
        self.waiting = 0  # generation requests waiting for the model to be free

    async def start(self) -> None:
        """Load the model on its thread, set Serve's batch limits, start the job runner."""
        settings = self.settings
        self.loop = asyncio.get_running_loop()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")  # torch runs on one thread
        self.service = await self.loop.run_in_executor(
            self.model_thread, ModelService.load, settings.model_path(), settings.device, settings.threads,
            settings.precision)
        self.name, self.info, self.device = self.service.name, self.service.info, self.service.device
        self._generate_batch.set_max_batch_size(settings.max_batch)
        self._generate_batch.set_batch_wait_timeout_s(settings.batch_window_ms / 1000)
        self.model_free = asyncio.Event()
        self.model_free.set()
        self.runner = JobRunner(self.store, self._submit, self.name, job_settings(settings, settings.max_batch))
        self.runner.start()

    def stop(self) -> None:
        """Stop the job runner (its unfinished items stay pending in the database)."""
        self.runner.stop(timeout=5)
        self.model_thread.shutdown(wait=False)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, tasks: list[GenerationTask]) -> list[Any]:
        self.model_free.clear()
        self.batches += 1
        self.motions += sum(task.request.variations for task in tasks)
        try:
            return await self.loop.run_in_executor(self.model_thread, self.service.generate, tasks)
        finally:
            self.model_free.set()

    async def _generated(self, task: GenerationTask) -> Any:
        """The task's list of Generated, through the gate and Serve's batch queue."""
        self.waiting += 1
        try:
            await self.model_free.wait()
        finally:
            self.waiting -= 1  # also when the request's deadline passed at the gate
        return await self._generate_batch(task)

    def _submit(self, task: GenerationTask, size: int) -> Future:
        """The job runner's way in (from its thread): the same batches as the requests."""
        return asyncio.run_coroutine_threadsafe(self._generated(task), self.loop)

    async def _deadline(self, work: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(work, timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"the request did not finish within {timeout:g} s") from None

    async def generate(self, task: GenerationTask, timeout: float) -> list[dict[str, Any]]:
        """The motion payloads of one request (the SMPL fit and encoding off the model thread)."""
        generated = await self._deadline(self._generated(task), timeout)
        return await self.loop.run_in_executor(None, motion_payloads, generated)

    async def _run_alone(self, task: AuditTask | EditTask) -> Any:
        """One task on the model thread; the ValueError that refused it is raised."""
        [result] = await self.loop.run_in_executor(self.model_thread, self.service.run, [task])
        if isinstance(result, Exception):
            raise result
        return result

    async def edit(self, task: EditTask, timeout: float) -> list[dict[str, Any]]:
        """The motion payloads of one edit; the ValueError that refused it otherwise."""
        generated = await self._deadline(self._run_alone(task), timeout)
        return await self.loop.run_in_executor(None, motion_payloads, generated)

    async def audit(self, task: AuditTask, timeout: float) -> dict[str, Any]:
        """One motion's audit report; the ValueError that refused it otherwise."""
        return await self._deadline(self._run_alone(task), timeout)

    def queue(self) -> dict[str, Any]:
        """This replica's waiting requests and batching numbers (the health endpoint reports the replica that
        answered it)."""
        return {"waiting": self.waiting, "capacity": self.settings.max_queue, "max_batch": self.settings.max_batch,
                "batches": self.batches, "mean_batch_motions": self.motions / self.batches if self.batches else 0.0}

    def wake(self) -> None:
        """A job was created here: this replica looks for work now (the others within a poll)."""
        self.runner.wake()

    def cancel(self, job_id: str) -> None:
        """Withdraw the job's queued items here (the others notice within a poll)."""
        self.runner.cancel(job_id)


class SafeMotionModel:
    """One replica: the FastAPI app (added with @serve.ingress in `model_deployment`) and, for deployment handles,
    the same work as methods."""

    def _engine(self) -> ReplicaEngine:
        return self.app.state.server.engine

    def describe(self) -> dict[str, Any]:
        """The served model's name, GET /v1/models description and device."""
        engine = self._engine()
        return {"name": engine.name, "info": engine.info, "device": engine.device}

    def whoami(self) -> dict[str, Any]:
        """This replica's actor name, process id, job-claim worker id, batching numbers and whether a batch is
        running (for operators, tests and bench/load.py)."""
        engine = self._engine()
        return {"actor": ray.get_runtime_context().get_actor_name(), "pid": os.getpid(),
                "worker": engine.runner.worker, "batches": engine.batches, "motions": engine.motions,
                "busy": not engine.model_free.is_set()}

    async def generate(self, task: GenerationTask, timeout: float) -> list[dict[str, Any]]:
        """ReplicaEngine.generate, for a handle."""
        return await self._engine().generate(task, timeout)

    async def edit(self, task: EditTask, timeout: float) -> list[dict[str, Any]]:
        """ReplicaEngine.edit, for a handle."""
        return await self._engine().edit(task, timeout)

    async def audit(self, task: AuditTask, timeout: float) -> dict[str, Any]:
        """ReplicaEngine.audit, for a handle."""
        return await self._engine().audit(task, timeout)


class RayEngine:
    """The app's engine (serve/engine.py) in `safemotion serve --engine ray`: the replicas through their handle."""

    def __init__(self, settings: ServerSettings, store: Store, handle: DeploymentHandle):
        self.settings = settings
        self.handle = handle

    async def start(self) -> None:
        """Ask the replicas what they serve."""
        described = await self.handle.describe.remote()
        self.name, self.info, self.device = described["name"], described["info"], described["device"]

    def stop(self) -> None:
        """Nothing to stop here: the replicas belong to Serve."""

    async def _call(self, method: str, task: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(getattr(self.handle, method).remote(task, timeout), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"the request did not finish within {timeout:g} s") from None
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            raise (cause if isinstance(cause, Exception) else err) from None

    async def generate(self, task: GenerationTask, timeout: float) -> list[dict[str, Any]]:
        """Generation on whichever replica Serve picks."""
        return await self._call("generate", task, timeout)

    async def edit(self, task: EditTask, timeout: float) -> list[dict[str, Any]]:
        """An edit on whichever replica Serve picks."""
        return await self._call("edit", task, timeout)

    async def audit(self, task: AuditTask, timeout: float) -> dict[str, Any]:
        """An audit on whichever replica Serve picks."""
        return await self._call("audit", task, timeout)

    def queue(self) -> dict[str, Any]:
        """Batching happens in the replicas; this process reports their limits only."""
        return {"waiting": 0, "capacity": self.settings.max_queue, "max_batch": self.settings.max_batch,
                "batches": 0, "mean_batch_motions": 0.0}

    def wake(self) -> None:
        """The replicas poll the database for new jobs."""

    def cancel(self, job_id: str) -> None:
        """The replicas notice cancelled jobs within a poll."""


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application: `args` are ServerSettings fields (model, db_url, replicas, max_batch, threads, ...),
    plus num_gpus (per replica, default 0)."""
    args = dict(args)
    num_gpus = float(args.pop("num_gpus", 0))
    settings = ServerSettings(**args)
    settings.validate()
    return model_deployment(settings, num_gpus).bind()


def model_deployment(settings: ServerSettings, num_gpus: float) -> serve.Deployment:
    """The deployment: `settings.replicas` replicas of one CPU (and `num_gpus` GPUs) each, the app as ingress."""
    ingress = serve.ingress(create_app(settings, ReplicaEngine))(SafeMotionModel)
    return serve.deployment(ingress, name=MODEL_DEPLOYMENT, num_replicas=settings.replicas,
                            max_ongoing_requests=256, ray_actor_options={"num_cpus": 1, "num_gpus": num_gpus})


def ray_engine_factory(settings: ServerSettings):
    """For `safemotion serve --engine ray` (uvicorn in this process serves the API): start or join Ray, deploy the
    replicas without an HTTP route, and return the app's engine factory bound to their handle."""
    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(settings.replicas, os.cpu_count() or 1), include_dashboard=False,
                     log_to_driver=False)
    num_gpus = 1 if settings.device in ("auto", "cuda") and ray.cluster_resources().get("GPU", 0) else 0
    handle = serve.run(model_deployment(settings, num_gpus).bind(), name=APP_NAME, route_prefix=None)
    return lambda settings_, store: RayEngine(settings_, store, handle)
