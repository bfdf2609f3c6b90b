"""Scale-out on Ray Serve: each model replica is also the HTTP ingress (the same FastAPI app as `safemotion serve`).

    safemotion serve --engine ray --replicas 2 --db postgresql+psycopg://... [--ray-address auto]
    serve run safemotion.serve.ray_app:build_app model=... db_url=... replicas=2   (or a Serve config file:
                                                                                    packaging/ray/serve_config.yaml)

`SafeMotionModel` is one Serve deployment of N replicas with the FastAPI app as its ingress (`@serve.ingress`), so
Serve's HTTP proxy hands each request straight to a replica: no separate ingress deployment and no second Ray hop.
The app's engine in a replica is the local server's `LocalEngine` (serve/engine.py): the model loaded once (one GPU
where `num_gpus` > 0), its MicroBatcher (which forms a batch whenever the model is free, refuses requests beyond
`max_queue` with 429 and drops requests whose deadline passed) and a JobRunner on the shared database. Serve's
@serve.batch is not used: it would be a second batching queue without those limits. Every replica serves every
endpoint, since jobs, keys and the audit log live in that database (PostgreSQL once a second node joins). Job items
are claimed atomically (store.Store.claim_items), so a batch job's items spread over the replicas, and when Ray kills
or loses a replica mid-item its claims run out after the lease and another replica (or its replacement) computes them
once more; a dead replica cannot store a result it no longer holds. Serve restarts replicas that die.

`safemotion serve --engine ray` deploys the same replicas without an HTTP route and serves the API from uvicorn in
its own process, calling them through a deployment handle (`RayEngine`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from safemotion.serve.app import create_app
from safemotion.serve.batcher import DeadlineExceeded
from safemotion.serve.engine import LocalEngine
from safemotion.serve.model_service import AuditTask, EditTask, GenerationTask
from safemotion.serve.settings import ServerSettings
from safemotion.serve.store import Store

APP_NAME = "safemotion"
MODEL_DEPLOYMENT = "SafeMotionModel"
# requests a replica takes beyond its batcher's two bounded lanes: the running batch, answers being encoded, and the
# endpoints that never wait for the model (health, jobs, keys); Serve queues anything beyond that before the replica,
# where no queue limit or deadline applies, so the batcher must be the one that refuses
ONGOING_HEADROOM = 64


def replica_engine(settings: ServerSettings, store: Store) -> LocalEngine:
    """The app's engine in a replica: the local server's (one micro-batcher in front of the model, the same queue
    limit, deadlines and lanes), keeping one batch of job items queued so a job's items spread over the replicas."""
    return LocalEngine(settings, store, job_batches=1)


class SafeMotionModel:
    """One replica: the FastAPI app (added with @serve.ingress in `model_deployment`) and, for deployment handles,
    the same work as methods."""

    def _engine(self) -> LocalEngine:
        return self.app.state.server.engine

    def describe(self) -> dict[str, Any]:
        """The served model's name, GET /v1/models description and device."""
        engine = self._engine()
        return {"name": engine.name, "info": engine.info, "device": engine.device}

    def whoami(self) -> dict[str, Any]:
        """This replica's actor name, process id, job-claim worker id, batching numbers and whether a batch is
        running (for operators, tests and bench/load.py)."""
        engine = self._engine()
        batcher = engine.batcher
        return {"actor": ray.get_runtime_context().get_actor_name(), "pid": os.getpid(),
                "worker": engine.runner.worker, "batches": batcher.batches, "motions": batcher.motions,
                "busy": batcher.busy}

    async def generate(self, task: GenerationTask, timeout: float) -> list[dict[str, Any]]:
        """LocalEngine.generate, for a handle."""
        return await self._engine().generate(task, timeout)

    async def edit(self, task: EditTask, timeout: float) -> list[dict[str, Any]]:
        """LocalEngine.edit, for a handle."""
        return await self._engine().edit(task, timeout)

    async def audit(self, task: AuditTask, timeout: float) -> dict[str, Any]:
        """LocalEngine.audit, for a handle."""
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
    """The deployment: `settings.replicas` replicas of one CPU (and `num_gpus` GPUs) each, the app as ingress, each
    taking every request its batcher may queue."""
    ingress = serve.ingress(create_app(settings, replica_engine))(SafeMotionModel)
    ongoing = 2 * settings.max_queue + settings.max_batch + ONGOING_HEADROOM
    return serve.deployment(ingress, name=MODEL_DEPLOYMENT, num_replicas=settings.replicas,
                            max_ongoing_requests=ongoing, ray_actor_options={"num_cpus": 1, "num_gpus": num_gpus})


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
