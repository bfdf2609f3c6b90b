"""Scale-out on Ray Serve: the same FastAPI app as the ingress, the model as a deployment of N replicas.

    safemotion serve --engine ray --replicas 2 --db postgresql+psycopg://... [--ray-address auto]
    serve run safemotion.serve.ray_app:build_app model=... db_url=... replicas=2   (or a Serve config file:
                                                                                    packaging/ray/serve_config.yaml)

`SafeMotionModel` replicas each load the model once (one GPU each where `num_gpus` > 0) and batch the requests that
reach them with Serve's @serve.batch; torch runs on one thread per replica. Every replica also runs a JobRunner on the
shared database: items are claimed atomically (store.Store.claim_items), so a batch job's items spread over the
replicas, and when Ray kills or loses a replica mid-item its claims run out after the lease and another replica (or
its replacement) computes them once more; a dead replica cannot store a result it no longer holds. Serve restarts
replicas that die. The ingress holds no model: it authenticates, validates, writes the audit log and calls the model
deployment through its handle. Jobs, keys and the audit log must be in a database every node reaches (PostgreSQL).
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


class SafeMotionModel:
    """One model replica: micro-batched generation (Serve's @serve.batch), audits, and its share of the jobs."""

    async def __init__(self, settings: ServerSettings):
        self.loop = asyncio.get_running_loop()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")  # torch runs on one thread
        self.service = await self.loop.run_in_executor(
            self.model_thread, ModelService.load, settings.model_path(), settings.device, settings.threads,
            settings.precision)
        self._generate_batch.set_max_batch_size(settings.max_batch)
        self._generate_batch.set_batch_wait_timeout_s(settings.batch_window_ms / 1000)
        self.store = Store(settings.database_url())
        self.runner = JobRunner(self.store, self._submit, self.service.name, job_settings(settings, settings.max_batch))
        self.runner.start()

    def describe(self) -> dict[str, Any]:
        """The served model's name, GET /v1/models description and device."""
        return {"name": self.service.name, "info": self.service.info, "device": self.service.device}

    def whoami(self) -> dict[str, Any]:
        """This replica's actor name, process id and job-claim worker id (for operators and tests)."""
        return {"actor": ray.get_runtime_context().get_actor_name(), "pid": os.getpid(), "worker": self.runner.worker}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, tasks: list[GenerationTask]) -> list[Any]:
        return await self.loop.run_in_executor(self.model_thread, self.service.generate, tasks)

    def _submit(self, task: GenerationTask, size: int) -> Future:
        """The job runner's way in (from its thread): the same batches as the requests."""
        return asyncio.run_coroutine_threadsafe(self._generate_batch(task), self.loop)

    async def generate(self, task: GenerationTask) -> list[dict[str, Any]]:
        """The motion payloads of one request (the SMPL fit and encoding off the model thread)."""
        generated = await self._generate_batch(task)
        return await self.loop.run_in_executor(None, motion_payloads, generated)

    async def _run_alone(self, task: AuditTask | EditTask) -> Any:
        """One task on the model thread; the ValueError that refused it is raised."""
        [result] = await self.loop.run_in_executor(self.model_thread, self.service.run, [task])
        if isinstance(result, Exception):
            raise result
        return result

    async def edit(self, task: EditTask) -> list[dict[str, Any]]:
        """The motion payloads of one edit; the ValueError that refused it otherwise."""
        generated = await self._run_alone(task)
        return await self.loop.run_in_executor(None, motion_payloads, generated)

    async def audit(self, task: AuditTask) -> dict[str, Any]:
        """One motion's audit report; the ValueError that refused it otherwise."""
        return await self._run_alone(task)

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.stop(timeout=5)
            self.store.close()


class RayEngine:
    """The app's engine (serve/engine.py) backed by the model deployment's handle."""

    def __init__(self, settings: ServerSettings, store: Store, handle: DeploymentHandle | None = None,
                 app_name: str = APP_NAME):
        self.settings = settings
        self.handle = handle
        self.app_name = app_name

    async def start(self) -> None:
        """Find the model deployment (of Serve application `app_name`) and ask it what it serves."""
        if self.handle is None:
            self.handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=self.app_name)
        described = await self.handle.describe.remote()
        self.name, self.info, self.device = described["name"], described["info"], described["device"]

    def stop(self) -> None:
        """Nothing to stop here: the replicas belong to Serve."""

    async def _call(self, method: str, task: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(getattr(self.handle, method).remote(task), timeout)
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
        """Batching happens in the replicas; the ingress reports their limits only."""
        return {"waiting": 0, "capacity": self.settings.max_queue, "max_batch": self.settings.max_batch,
                "batches": 0, "mean_batch_motions": 0.0}

    def wake(self) -> None:
        """The replicas poll the database for new jobs."""

    def cancel(self, job_id: str) -> None:
        """The replicas notice cancelled jobs within a poll."""


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application: `args` are ServerSettings fields (model, db_url, replicas, max_batch, threads, ...),
    plus num_gpus (per replica, default 0) and app_name (the name it is deployed under, default "safemotion")."""
    args = dict(args)
    num_gpus = float(args.pop("num_gpus", 0))
    app_name = str(args.pop("app_name", APP_NAME))
    settings = ServerSettings(**args)
    settings.validate()
    fastapi_app = create_app(settings, functools.partial(RayEngine, app_name=app_name))

    @serve.deployment(name="SafeMotionIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
    @serve.ingress(fastapi_app)
    class SafeMotionIngress:
        def __init__(self, model_handle: DeploymentHandle):
            self.model_handle = model_handle  # binding it makes Serve deploy the model with the ingress

    return SafeMotionIngress.bind(model_deployment(settings, num_gpus).bind(settings))


def model_deployment(settings: ServerSettings, num_gpus: float) -> serve.Deployment:
    """The model deployment: `settings.replicas` replicas of one CPU (and `num_gpus` GPUs) each."""
    return serve.deployment(SafeMotionModel, name=MODEL_DEPLOYMENT, num_replicas=settings.replicas,
                            max_ongoing_requests=4 * settings.max_batch,
                            ray_actor_options={"num_cpus": 1, "num_gpus": num_gpus})


def ray_engine_factory(settings: ServerSettings):
    """For `safemotion serve --engine ray` (uvicorn in this process is the ingress): start or join Ray, deploy the
    model replicas, and return the app's engine factory bound to their handle."""
    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(settings.replicas, os.cpu_count() or 1), include_dashboard=False,
                     log_to_driver=False)
    num_gpus = 1 if settings.device in ("auto", "cuda") and ray.cluster_resources().get("GPU", 0) else 0
    handle = serve.run(model_deployment(settings, num_gpus).bind(settings), name=APP_NAME, route_prefix=None)
    return lambda settings_, store: RayEngine(settings_, store, handle)
