"""The HTTP API (FastAPI), versioned under /v1. `create_app(settings)` builds it; models load when it starts.

    POST   /v1/generate            one prompt → its motions (+ safety records)
    POST   /v1/jobs                many prompts → a job id (202)
    GET    /v1/jobs/{id}           status and per-item progress
    GET    /v1/jobs/{id}/results   finished items' motions, a page at a time
    DELETE /v1/jobs/{id}           cancel
    POST   /v1/edit                a take → regenerated frames, an extension or an in-between (+ safety records)
    POST   /v1/audit               a motion → where it uses removed codes
    GET    /v1/models              the served model and what it accepts
    GET    /v1/body-model          the body mesh to skin the SMPL armature with (404 without --body-model)
    GET    /v1/health              liveness, queue and batching numbers (no key needed)
    GET    /v1/audit-log           generations and policy decisions (safety admins)

Errors: 400 malformed JSON, 401 missing/wrong key, 403 role or policy refused, 404 unknown job, 409 job finished,
413 body too large, 422 invalid field ({"detail": [{"field", "reason", "type"}]}), 429 queue full (Retry-After),
504 deadline passed. Handlers that touch the database are plain functions (FastAPI runs them in its thread pool);
generation awaits the engine (serve/engine.py: this process's micro-batcher, or Ray Serve replicas), so the event
loop never waits on torch or SQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import safemotion
from safemotion.generate import GenerationRequest
from safemotion.motion import skeleton
from safemotion.motion.features import NUM_JOINTS
from safemotion.serve import schemas
from safemotion.serve.auth import AuthError, Caller, authenticate
from safemotion.serve.batcher import DeadlineExceeded, QueueFull
from safemotion.serve.encoding import ArrayError, decode_array, encode_array
from safemotion.edit import (
    FPS_TOLERANCE,
    SourceMotion,
    source_from_features,
    source_from_joints,
    with_base_tokens,
)
from safemotion.motion.features import FEATURE_DIM
from safemotion.serve.engine import Engine, LocalEngine
from safemotion.serve.jobs import safety_fields
from safemotion.serve.model_service import AuditTask, EditTask, GenerationTask, NotAuditable
from safemotion.serve.settings import ServerSettings
from safemotion.unlearn.audit import check_audit_length
from safemotion.serve.store import AuditEntry, QuotaExceeded, Store

log = logging.getLogger("safemotion.serve")

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_AUDIT_COORDINATE = 1000.0  # metres; anything beyond is not a human motion
RESULTS_PAGE = 64  # items per results page at most
PAGE_MOTIONS = 64  # motions per results page at most (up to ~150 KB each)


class FieldError(Exception):
    """A request field that passed its type checks but is wrong for this server (unknown model, ...): 422."""

    def __init__(self, field: str, reason: str, kind: str = "value_error"):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.kind = field, reason, kind


@dataclass
class ServerState:
    """What the running app holds: settings, database and the engine running the model."""

    settings: ServerSettings
    store: Store
    engine: Engine
    body_model: dict[str, Any] | None = None  # the GET /v1/body-model body, encoded once at start

    def keys_required(self) -> bool:
        """Keys are needed off loopback and once any key was made (revoking every key locks the server rather than
        opening it)."""
        return not self.settings.is_loopback() or self.store.has_keys(include_revoked=True)

    def check_model(self, requested: str | None, field: str = "model") -> str:
        """The served model's name; a request for another model is a FieldError."""
        if requested is not None and requested != self.engine.name:
            raise FieldError(field, f"unknown model {requested!r}; this server serves {self.engine.name!r} "
                                    "(see GET /v1/models)")
        return self.engine.name

    def check_seconds(self, seconds: float | None, field: str) -> None:
        """A missing duration needs a length estimator."""
        if seconds is None and not self.engine.info["length_estimator"]:
            raise FieldError(field, f"model {self.engine.name!r} has no length estimator; give the duration in "
                                    "seconds")

    def check_policy(self, caller: Caller, policy: str, prompts: list[str], request_id: str | None) -> None:
        """Refuse `allow` unless the caller is a safety admin and the server permits it (refusals are audited)."""
        if policy != "allow":
            return
        if self.settings.forbid_allow:
            reason = "this server forbids the 'allow' policy (started with --forbid-allow)"
        elif not caller.is_safety_admin:
            reason = "only safety-admin keys may request the 'allow' policy"
        else:
            return
        self.store.add_audit([AuditEntry(username=caller.name, role=caller.role, event="policy_refused",
                                         model=self.engine.name, prompt=prompt, policy=policy, decision="refused",
                                         request_id=request_id) for prompt in prompts])
        raise AuthError(403, reason)



def create_app(settings: ServerSettings, engine_factory: Callable[[ServerSettings, Store], Engine] = LocalEngine
               ) -> FastAPI:
    """The FastAPI application for `settings`; the database and the engine (by default the model in this process)
    start with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = Store(settings.database_url())
        engine = engine_factory(settings, store)
        await engine.start()
        body = None
        if settings.body_model is not None:
            body = await asyncio.to_thread(body_model_payload, settings.body_model)
        app.state.server = ServerState(settings, store, engine, body)
        log.info("ready", extra={"model": engine.name, "device": engine.device,
                                 "precision": settings.precision, "host": settings.host,
                                 "port": settings.port, "max_batch": settings.max_batch,
                                 "auth": "api-keys" if app.state.server.keys_required() else "single-user"})
        try:
            yield
        finally:
            engine.stop()
            store.close()
            log.info("stopped")

    app = FastAPI(title="SafeMotion", version=safemotion.__version__, lifespan=lifespan,
                  description="Text-to-motion with unlearned violent content. Arrays are base64 little-endian "
                              "(see ArrayPayload); joints and rest poses are in metres, Y-up, facing +Z.")
    app.include_router(router)
    for error, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(error, handler)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog)
    return app


# ---------------------------------------------------------------------------------------------- dependencies

bearer = HTTPBearer(auto_error=False, description="an API key from `safemotion keys add` (not needed in "
                                                  "single-user mode: loopback, no keys configured)")


def server(request: Request) -> ServerState:
    """The running app's state."""
    return request.app.state.server


def current_caller(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """Who sent the request (AuthError 401 when a key is needed or wrong)."""
    caller = authenticate(server(request).store, None if credentials is None else credentials.credentials,
                          server(request).keys_required())
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
StateDep = Annotated[ServerState, Depends(server)]
JobIdPath = Annotated[str, Path(max_length=64, description="the id returned by POST /v1/jobs")]


def request_id(request: Request) -> str | None:
    """The request's id (X-Request-ID or generated)."""
    return getattr(request.state, "request_id", None)


# ---------------------------------------------------------------------------------------------- routes

ERRORS = {code: {"model": schemas.ErrorMessage} for code in (400, 401, 403, 413, 429, 504)}
ERRORS[422] = {"model": schemas.ValidationProblem}
JOB_ERRORS = {**ERRORS, 404: {"model": schemas.ErrorMessage}, 409: {"model": schemas.ErrorMessage}}

router = APIRouter(prefix="/v1")


@router.get("/health", response_model=schemas.HealthResponse)
def health(state: StateDep) -> dict[str, Any]:
    """Liveness and the batching queue; needs no key."""
    return {"status": "ok", "version": safemotion.__version__, "model": state.engine.name,
            "device": state.engine.device, "auth": "api-keys" if state.keys_required() else "single-user",
            "queue": state.engine.queue()}


@router.get("/models", response_model=schemas.ModelsResponse, responses=ERRORS)
def models(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The served model: its name, what lengths and variations it accepts, its unlearning and policies."""
    policies = ["sanitize", "block"] + ([] if state.settings.forbid_allow else ["allow"])
    return {"models": [{**state.engine.info, "policies": policies}], "body_model": state.body_model is not None}


@router.get("/body-model", response_model=schemas.BodyModelResponse,
            responses={**ERRORS, 404: {"model": schemas.ErrorMessage}})
def body_model(state: StateDep, caller: CallerDep) -> JSONResponse:
    """The body model's template mesh and skinning weights, to skin the add-on's SMPL armature with."""
    if state.body_model is None:
        raise HTTPException(404, "this server has no body model; start it with `safemotion serve --body-model "
                                 "PATH` (an SMPL-format .pkl/.npz you own) to get a skinned body")
    return JSONResponse(state.body_model)


@router.post("/generate", response_model=schemas.GenerateResponse, responses=ERRORS)
async def generate(body: schemas.GenerateRequest, request: Request, state: StateDep,
                   caller: CallerDep) -> JSONResponse:
    """Generate `variations` motions for one prompt under a safety policy (default sanitize)."""
    model = state.check_model(body.model)
    state.check_seconds(body.seconds, "seconds")
    await run_in_threadpool(state.check_policy, caller, body.policy, [body.prompt], request_id(request))
    task = GenerationTask(GenerationRequest(body.prompt, body.seconds, body.seed, body.variations,
                                            body.foot_cleanup), body.policy)
    motions = await state.engine.generate(task, state.settings.request_timeout_s)
    return await motions_response(state, caller, request, "generate", model, body.prompt, body.policy, motions)


@router.post("/jobs", status_code=202, response_model=schemas.JobStatus, responses=ERRORS)
def create_job(body: schemas.JobRequest, request: Request, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Queue a batch of prompts; poll GET /v1/jobs/{id}, fetch GET /v1/jobs/{id}/results."""
    model = state.check_model(body.model)
    for i, item in enumerate(body.items):
        state.check_seconds(item.seconds, f"items.{i}.seconds")
    state.check_policy(caller, body.policy, [item.prompt for item in body.items], request_id(request))
    job_id = uuid.uuid4().hex
    state.store.create_job(job_id, caller.name, caller.role, model, body.policy,
                           [item.model_dump() for item in body.items], state.settings.max_queued_motions)
    state.engine.wake()
    log.info("job created", extra={"job": job_id, "items": len(body.items), "user": caller.name})
    return job_status(state, job_id)


@router.get("/jobs/{job_id}", response_model=schemas.JobStatus, responses=JOB_ERRORS)
def get_job(job_id: JobIdPath, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """A job's status and the progress of each of its prompts."""
    visible_job(state, caller, job_id)
    return job_status(state, job_id)


@router.get("/jobs/{job_id}/results", response_model=schemas.JobResults, responses=JOB_ERRORS)
def job_results(job_id: JobIdPath, state: StateDep, caller: CallerDep,
                start: Annotated[int, Query(ge=0, le=1_000_000, description="first item index")] = 0,
                limit: Annotated[int, Query(ge=1, le=RESULTS_PAGE, description="items per page")] = 16,
                ) -> JSONResponse:
    """Items start..start+limit-1 with the motions of the finished ones (a page holds at most 64 motions)."""
    job = visible_job(state, caller, job_id)
    rows, motions = [], 0
    for row in state.store.item_results(job_id, start, limit):
        motions += row["variations"]
        if rows and motions > PAGE_MOTIONS:
            break
        rows.append(row)
    items = [{"index": row["idx"], "status": row["status"], "error": row["error"],
              "motions": json.loads(row["result"]) if row["result"] else None} for row in rows]
    following = start + len(rows)
    return JSONResponse({"id": job_id, "status": job["status"], "items": items,
                         "next_start": following if following < job["total"] else None})


@router.delete("/jobs/{job_id}", response_model=schemas.JobStatus, responses=JOB_ERRORS)
def cancel_job(job_id: JobIdPath, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel a job: pending prompts are dropped, finished ones stay available."""
    job = visible_job(state, caller, job_id)
    if job["status"] == "done":
        raise HTTPException(409, f"job {job_id} has already finished; nothing to cancel")
    if state.store.cancel_job(job_id):
        state.engine.cancel(job_id)
        log.info("job cancelled", extra={"job": job_id, "user": caller.name})
    return job_status(state, job_id)


@router.post("/edit", response_model=schemas.GenerateResponse, responses=ERRORS)
async def edit(body: schemas.EditRequest, request: Request, state: StateDep, caller: CallerDep) -> JSONResponse:
    """Edit a take under a safety policy: regenerate frame spans, extend it, or generate an in-between to a second
    take; every variation is reviewed like a generation, its kept frames included."""
    model = state.check_model(body.model)
    operations = [name for name, value in (("frames", body.frames), ("extend_seconds", body.extend_seconds),
                                           ("between", body.between)) if value is not None]
    if len(operations) != 1:
        raise FieldError("body", f"give exactly one of frames, extend_seconds or between (got {operations or 'none'})")
    if body.between is not None and body.seconds is None:
        raise FieldError("seconds", "an in-between needs `seconds`, the length of the transition")
    info = state.engine.info
    source = edit_source_of(body.source, "source", info)
    second = None if body.between is None else edit_source_of(body.between, "between", info)
    await run_in_threadpool(state.check_policy, caller, body.policy, [body.prompt], request_id(request))
    operation = {"frames": "edit", "extend_seconds": "extend", "between": "inbetween"}[operations[0]]
    task = EditTask(operation, source, body.prompt, body.seed, body.variations, body.policy,
                    frames=None if body.frames is None else [tuple(span) for span in body.frames],
                    seconds=body.extend_seconds if operation == "extend" else body.seconds, at=body.extend_at,
                    second=second)
    try:
        motions = await state.engine.edit(task, state.settings.request_timeout_s)
    except ValueError as err:
        raise FieldError(operations[0], str(err)) from None
    return await motions_response(state, caller, request, "edit", model, body.prompt, body.policy, motions)


@router.post("/audit", response_model=schemas.AuditResponse, responses=ERRORS)
async def audit(body: schemas.AuditRequest, request: Request, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Where a motion (joints [T, 22, 3], metres, Y-up) uses the codes the model removed, second by second."""
    model = state.check_model(body.model)
    joints = audit_joints_of(body.joints)
    try:
        check_audit_length(len(joints), body.fps, "joints")
    except ValueError as err:
        raise FieldError("joints.shape", str(err).removeprefix("joints: ")) from None
    try:
        report = await state.engine.audit(AuditTask(joints, body.fps), state.settings.request_timeout_s)
    except NotAuditable as err:
        raise FieldError("model", str(err)) from None
    except ValueError as err:
        raise FieldError("joints", str(err)) from None
    entry = AuditEntry(username=caller.name, role=caller.role, event="motion_audit", model=model,
                       decision="flagged" if report["flagged"] else "pass", flagged=report["flagged"],
                       hit_ratio=report["hit_ratio"], signals=json.dumps(report["signals"]),
                       reason=report["reason"], request_id=request_id(request))
    await run_in_threadpool(state.store.add_audit, [entry])
    return report


@router.get("/audit-log", response_model=schemas.AuditLogResponse, responses=ERRORS)
def audit_log(state: StateDep, caller: CallerDep,
              since: Annotated[datetime | None, Query(description="ISO 8601 time (UTC if no offset)")] = None,
              until: Annotated[datetime | None, Query(description="ISO 8601 time, exclusive")] = None,
              user: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
              flagged: bool | None = None,
              event: Literal["generate", "edit", "job_item", "policy_refused", "motion_audit"] | None = None,
              before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Generations, flags and policy decisions, newest first (safety-admin keys only)."""
    if not caller.is_safety_admin:
        raise AuthError(403, "the audit log is for safety-admin keys only")
    rows = state.store.audit_entries(epoch(since), epoch(until), user, flagged, event, before_id, limit)
    entries = [{"id": row["id"], "time": iso_time(row["ts"]), "user": row["username"],
                **{key: row[key] for key in ("role", "event", "model", "prompt", "policy", "decision", "flagged",
                                             "hit_ratio", "reason", "seed", "variation", "job_id", "request_id")},
                "signals": None if row["signals"] is None else json.loads(row["signals"])}
               for row in rows]
    return {"entries": entries, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}


# ---------------------------------------------------------------------------------------------- helpers

async def motions_response(state: ServerState, caller: Caller, request: Request, event: str, model: str, prompt: str,
                           policy: str, motions: list[dict[str, Any]]) -> JSONResponse:
    """The GenerateResponse of generated or edited motions (payloads), each one written to the audit log."""
    entries = [AuditEntry(username=caller.name, role=caller.role, event=event, model=model, prompt=prompt,
                          policy=policy, seed=m["seed"], variation=m["variation"], request_id=request_id(request),
                          **safety_fields(m["safety"])) for m in motions]
    await run_in_threadpool(state.store.add_audit, entries)
    return JSONResponse({"model": model, "policy": policy, "motions": motions})


def visible_job(state: ServerState, caller: Caller, job_id: str) -> dict[str, Any]:
    """The job if it exists and the caller owns it (safety admins see all); 404 otherwise."""
    job = state.store.get_job(job_id) if JOB_ID.match(job_id) else None
    if job is None or not (caller.is_safety_admin or job["owner"] == caller.name):
        raise HTTPException(404, f"no job {job_id!r}")
    return job


def job_status(state: ServerState, job_id: str) -> dict[str, Any]:
    """The JobStatus body of a job."""
    job = state.store.get_job(job_id)
    items = [{"index": row["idx"], "status": row["status"], "prompt": row["prompt"], "seconds": row["seconds"],
              "seed": row["seed"], "variations": row["variations"], "error": row["error"],
              "finished_at": None if row["finished_at"] is None else iso_time(row["finished_at"])}
             for row in state.store.job_items(job_id)]
    return {"id": job_id, "status": job["status"], "owner": job["owner"], "model": job["model"],
            "policy": job["policy"], "created_at": iso_time(job["created_at"]),
            "updated_at": iso_time(job["updated_at"]), "total": job["total"], **job["counts"], "items": items}


def body_model_payload(path: pathlib.Path) -> dict[str, Any]:
    """The GET /v1/body-model body of an SMPL-format file (loaded once with smplx; ValueError if not 24 joints)."""
    from safemotion.motion.body_model import load_body_model, model_rest_joints  # smplx: only with --body-model

    model = load_body_model(pathlib.Path(path).expanduser())
    weights = model.lbs_weights.detach().numpy()
    if weights.shape[1] != len(skeleton.SMPL24_NAMES):
        raise ValueError(f"--body-model {path}: skinning weights for {weights.shape[1]} joints; an SMPL body has "
                         f"{len(skeleton.SMPL24_NAMES)}")
    return {"joint_names": list(skeleton.SMPL24_NAMES), "parents": list(skeleton.SMPL24_PARENTS),
            "rest_joints": encode_array(model_rest_joints(model)),
            "vertices": encode_array(model.v_template.detach().numpy()),
            "faces": encode_array(model.faces.astype(np.int64), "int32"),
            "weights": encode_array(weights), "up": "+Y", "units": "metres"}


def audit_joints_of(payload: schemas.ArrayPayload) -> np.ndarray:
    """The joints array of an audit or edit request, checked: [T, 22, 3], 2-4000 frames, finite, within 1 km."""
    return checked_array(payload, "joints", (NUM_JOINTS, 3), "joint positions")


def checked_array(payload: schemas.ArrayPayload, field: str, frame_shape: tuple[int, ...], what: str) -> np.ndarray:
    """A decoded [T, *frame_shape] array of 2-4000 frames with finite values within ±1000; FieldError otherwise."""
    array = decoded(payload, field)
    expected = "[T, " + ", ".join(str(n) for n in frame_shape) + "]"
    if array.ndim != 1 + len(frame_shape) or array.shape[1:] != frame_shape:
        raise FieldError(f"{field}.shape", f"expected {expected}, got {list(array.shape)}")
    if not 2 <= array.shape[0] <= schemas.MAX_AUDIT_FRAMES:
        raise FieldError(f"{field}.shape", f"{array.shape[0]} frames; allowed range is 2-{schemas.MAX_AUDIT_FRAMES}")
    if not np.isfinite(array).all() or np.abs(array).max() > MAX_AUDIT_COORDINATE:
        raise FieldError(f"{field}.data", f"{what} must be finite and within ±{MAX_AUDIT_COORDINATE:g}")
    return array


def decoded(payload: schemas.ArrayPayload, field: str) -> np.ndarray:
    """The array of a request's base64 payload; FieldError naming the field when it cannot be decoded."""
    try:
        return decode_array(payload.model_dump(), field)
    except ArrayError as err:
        raise FieldError(err.field, err.reason) from None


def edit_source_of(payload: schemas.SourcePayload, field: str, info: dict[str, Any]) -> SourceMotion:
    """The take of an edit request: exactly one of joints [T, 22, 3] or features [T, 263], checked, at the served
    model's frame rate (`info`: GET /v1/models' description), with its base ids checked against the model."""
    if (payload.joints is None) == (payload.features is None):
        raise FieldError(field, "give exactly one of `joints` [T, 22, 3] or `features` [T, 263]")
    fps = info["fps"]
    if abs(payload.fps - fps) > FPS_TOLERANCE:
        raise FieldError(f"{field}.fps", f"the take is at {payload.fps:g} fps but the model works at {fps:g} fps; "
                                         f"resample it to {fps:g} fps")
    try:
        if payload.joints is not None:
            source = source_from_joints(checked_array(payload.joints, f"{field}.joints", (NUM_JOINTS, 3),
                                                      "joint positions"), payload.fps, field)
        else:
            source = source_from_features(checked_array(payload.features, f"{field}.features", (FEATURE_DIM,),
                                                        "features"), payload.fps, field)
    except ValueError as err:
        raise FieldError(field, str(err)) from None
    if payload.base_tokens is None:
        return source
    try:
        return with_base_tokens(source, decoded(payload.base_tokens, f"{field}.base_tokens"), info["unit_length"],
                                info["codebook_size"])
    except ValueError as err:
        raise FieldError(f"{field}.base_tokens", str(err).removeprefix(f"{field}: ")) from None


def epoch(moment: datetime | None) -> float | None:
    """UNIX seconds of a datetime (naive = UTC)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def iso_time(seconds: float) -> str:
    """ISO 8601 UTC time with milliseconds."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------- errors

def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    errors = err.errors()
    if any(error["type"] == "json_invalid" for error in errors):
        reason = next(error for error in errors if error["type"] == "json_invalid").get("ctx", {}).get("error", "")
        return JSONResponse({"detail": f"the body is not valid JSON: {reason}"}, status_code=400)
    problems = [{"field": _field_name(tuple(error["loc"])), "reason": error["msg"], "type": error["type"]}
                for error in errors]
    return JSONResponse({"detail": problems}, status_code=422)


async def _field_error(request: Request, err: FieldError) -> JSONResponse:
    return JSONResponse({"detail": [{"field": err.field, "reason": err.reason, "type": err.kind}]}, status_code=422)


async def _auth_error(request: Request, err: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse({"detail": err.message}, status_code=err.status, headers=headers)


async def _queue_full(request: Request, err: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=429, headers={"Retry-After": str(err.retry_after)})


async def _quota(request: Request, err: QuotaExceeded) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=429, headers={"Retry-After": "60"})


async def _deadline(request: Request, err: DeadlineExceeded) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=504)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=err, extra={"path": request.url.path, "request_id": request_id(request)})
    return JSONResponse({"detail": f"internal error (request {request_id(request)}); see the server log"},
                        status_code=500)


ERROR_HANDLERS = {RequestValidationError: _validation_error, FieldError: _field_error, AuthError: _auth_error,
                  QueueFull: _queue_full, QuotaExceeded: _quota, DeadlineExceeded: _deadline, Exception: _unexpected}


# ---------------------------------------------------------------------------------------------- middleware

async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """Reads each request body up front and answers 413 when it exceeds `max_bytes` (declared or actual)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = {"detail": f"the request body is larger than this server's limit of {self.max_bytes} bytes"}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, {"detail": "the Content-Length header is not a number"})
                return
            if int(declared) > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # client disconnected
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class AccessLog:
    """Gives each request an id (X-Request-ID, echoed back) and logs one JSON line per response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            caller = scope["state"].get("caller")
            log.info("request", extra={"method": scope["method"], "path": scope["path"], "status": status,
                                       "ms": round(1000 * (time.perf_counter() - started), 1),
                                       "request_id": rid, "user": caller.name if caller else None})

