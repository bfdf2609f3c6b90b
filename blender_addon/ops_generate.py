"""Generate: the scene's prompt → a server job → takes (SMPL armature + action each, optionally retargeted).

`GenerationJob` is one generation from submission to written takes. Its server requests (the bundled server's start,
submit, status polls, results, body model, cancel) run on its own `RequestThread`, which never touches bpy data; the
modal operator's window-manager timer only reads their answers and writes the scene, so no tick waits for the server
(Esc, the Cancel button, a file load or disabling the add-on cancel the job on the server and write nothing). In
background mode (`bpy.app.background`: tests, command line) the operator runs the same steps in a loop.
Each variation is its own job item (seed + k, one variation), so the progress bar moves per take.

Writing results happens only after every returned motion has been decoded and checked, and the bone mapping of the
target armature has been resolved, so a bad answer or an unmappable rig writes nothing. Blocked motions (policy
`block`) carry no arrays: they write nothing, and their reason is reported. The operator finishes with one undo step.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import bpy
import numpy as np

from . import (
    armature,
    backend_process,
    batch_prompts,
    keyframes,
    mapping_editor,
    retarget,
    safety,
    scene_guard,
    smpl_math,
)
from .client import BackendClient, BackendError, cancel_quietly, decode_array, submit_job
from .preferences import addon_preferences, allow_granted, connector
from .request_thread import BLOCKING_STEP_S, RequestThread
from .properties import MAX_SEED

POLL_INTERVAL_S = 0.25  # between job status requests, and between the modal operator's timer ticks
STALL_LIMIT_S = 600.0  # give up when no take finishes for this long
SMPL_ARMATURE_NAME = "SafeMotion SMPL"
# The server fits a body (rest skeleton) to each motion; an armature is reused for a body whose joints all lie within
# this distance of its own (limb lengths then differ by at most about twice this), else a new armature is built. With
# the embedded mini model, walks of seeds 0-2 fit bodies 0.8-1.7 cm apart; a jump or a wave 5-40 cm away from them.
REST_MATCH_M = 0.02
# An edit's take must be its source take outside the edited frames, so it is keyed only on an armature with its own
# skeleton (up to float32 rounding); the server re-fits the body of every edit, usually within REST_MATCH_M of the
# source's, and shown on the source's armature the kept frames would move by up to that much.
EDIT_REST_MATCH_M = 1e-4


# ---------------------------------------------------------------------------------------------- request

def job_request(settings: bpy.types.PropertyGroup) -> tuple[dict, int]:
    """The POST /v1/jobs body for the scene's settings (one item per variation) and the seed it starts from."""
    prompt = settings.prompt.strip()
    if not prompt:
        raise BackendError("Type a prompt first, e.g. 'a person walks forward and waves'")
    try:
        batch_prompts.check_prompt(prompt, "Prompt")
    except ValueError as err:  # the server's own limits, checked before anything is sent
        raise BackendError(str(err)) from None
    if settings.policy not in ("SANITIZE", "BLOCK") and not (settings.policy == "ALLOW" and allow_granted(bpy.context)):
        raise BackendError("The Allow policy needs a server that grants it to your safety-admin key (Preferences ▸ "
                           "Add-ons ▸ SafeMotion ▸ Check Connection); choose Sanitize or Block")
    seed = random.randrange(0, MAX_SEED + 1) if settings.random_seed else settings.seed
    items = [{"prompt": prompt, "seconds": round(float(settings.seconds), 3), "seed": seed + k, "variations": 1}
             for k in range(settings.variations)]
    if not settings.foot_cleanup:  # only when off: the server's default is on, and older servers know no such field
        for item in items:
            item["foot_cleanup"] = False
    return {"items": items, "policy": settings.policy.lower()}, seed


# ---------------------------------------------------------------------------------------------- results

@dataclass
class Motion:
    """One returned motion, decoded: SMPL arrays and skeleton (None when blocked) and its safety record."""

    prompt: str
    seed: int
    fps: float
    safety: dict | None
    pose: np.ndarray | None = None  # [T, 24, 3] axis-angle, Y-up
    transl: np.ndarray | None = None  # [T, 3]
    rest_joints: np.ndarray | None = None  # [24, 3]
    names: tuple[str, ...] = ()
    parents: tuple[int, ...] = ()
    foot_cleanup: bool = False  # whether the server pinned the feet and grounded the motion
    base_tokens: np.ndarray | None = None  # [T / 4] base-layer code ids it was decoded from (column 0 of `tokens`)
    seam_warnings: list[str] = field(default_factory=list)  # an edit's seams still over the server's limit

    @property
    def blocked(self) -> bool:
        """Whether the server withheld the motion (policy block)."""
        return self.pose is None


def decode_motion(payload: dict, where: str) -> Motion:
    """A Motion from a MotionPayload; malformed payloads raise BackendError naming `where`."""
    try:
        motion = Motion(prompt=str(payload["prompt"]), seed=int(payload["seed"]), fps=float(payload["fps"]),
                        safety=payload.get("safety"), foot_cleanup=bool(payload.get("foot_cleanup", False)),
                        seam_warnings=[str(w) for w in (payload.get("seams") or {}).get("warnings", [])])
        smpl, skeleton = payload.get("smpl"), payload.get("skeleton")
    except (KeyError, TypeError, ValueError) as err:
        raise BackendError(f"the server sent a malformed motion ({where}): {err!r}") from None
    if smpl is None or skeleton is None:
        if motion.safety is None or motion.safety.get("decision") != "blocked":
            raise BackendError(f"the server sent a motion without SMPL data that was not blocked ({where})")
        return motion
    motion.pose = decode_array(smpl.get("pose"), f"{where}.smpl.pose")
    motion.transl = decode_array(smpl.get("transl"), f"{where}.smpl.transl")
    motion.rest_joints = decode_array(skeleton.get("rest_joints"), f"{where}.skeleton.rest_joints")
    if payload.get("tokens") is not None:
        tokens = decode_array(payload["tokens"], f"{where}.tokens")
        if tokens.ndim != 2 or tokens.shape[1] < 1 or tokens.dtype.kind != "i":
            raise BackendError(f"the server sent malformed tokens ({where}): {tokens.dtype} {list(tokens.shape)}, "
                               "expected integer ids [tokens, layers]")
        motion.base_tokens = tokens[:, 0]
    motion.names = tuple(skeleton.get("joint_names", ()))
    motion.parents = tuple(skeleton.get("parents", ()))
    joints = len(motion.names)
    frames = motion.pose.shape[0] if motion.pose.ndim == 3 else 0
    if (joints != smpl_math.NUM_JOINTS or len(motion.parents) != joints or frames < 1
            or motion.pose.shape != (frames, joints, 3) or motion.transl.shape != (frames, 3)
            or motion.rest_joints.shape != (joints, 3) or not motion.fps > 0):
        raise BackendError(f"the server sent a motion with inconsistent shapes ({where}): {joints} joints, pose "
                           f"{motion.pose.shape}, transl {motion.transl.shape}, rest {motion.rest_joints.shape}")
    if not all(np.isfinite(a).all() for a in (motion.pose, motion.transl, motion.rest_joints)):
        raise BackendError(f"the server sent a motion with non-finite values ({where})")
    return motion


@dataclass
class BodyModel:
    """The server's body model (GET /v1/body-model): template mesh, skinning weights, its own rest joints; Y-up."""

    names: tuple[str, ...]
    rest_joints: np.ndarray  # [24, 3]
    vertices: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    weights: np.ndarray  # [V, 24]


def decode_body_model(payload: dict) -> BodyModel:
    """A BodyModel from a BodyModelResponse; malformed payloads raise BackendError."""
    body = BodyModel(names=tuple(payload.get("joint_names", ())),
                     rest_joints=decode_array(payload.get("rest_joints"), "body_model.rest_joints"),
                     vertices=decode_array(payload.get("vertices"), "body_model.vertices"),
                     faces=decode_array(payload.get("faces"), "body_model.faces"),
                     weights=decode_array(payload.get("weights"), "body_model.weights"))
    joints, count = len(body.names), len(body.vertices)
    if (joints != smpl_math.NUM_JOINTS or set(body.names) != set(smpl_math.JOINT_NAMES)
            or body.rest_joints.shape != (joints, 3) or body.vertices.shape != (count, 3)
            or body.weights.shape != (count, joints) or body.faces.ndim != 2 or body.faces.shape[1:] != (3,)):
        raise BackendError(f"the server sent a body model that is not SMPL's {smpl_math.NUM_JOINTS} joints or has "
                           f"inconsistent shapes: joints {list(body.names)}, rest {body.rest_joints.shape}, vertices "
                           f"{body.vertices.shape}, faces {body.faces.shape}, weights {body.weights.shape}")
    if not all(np.isfinite(a).all() for a in (body.rest_joints, body.vertices, body.weights)):
        raise BackendError("the server sent a body model with non-finite values")
    return body


def motions_of_results(results: dict) -> tuple[list[Motion], list[str]]:
    """The decoded motions of a job's results, in item order, and the error of every failed item."""
    motions, errors = [], []
    for item in sorted(results.get("items", []), key=lambda i: i.get("index", 0)):
        if item.get("status") == "failed":
            errors.append(f"take {item.get('index', 0) + 1} failed on the server: {item.get('error')}")
        for k, payload in enumerate(item.get("motions") or []):
            motions.append(decode_motion(payload, f"item {item.get('index')} motion {k}"))
    return motions, errors


def find_smpl_armature(scene: bpy.types.Scene, motion: Motion, exclude: bpy.types.Object | None = None,
                       tolerance: float = REST_MATCH_M) -> bpy.types.Object | None:
    """An armature in the scene (not `exclude`) with this motion's joint names and rest joints (each within
    `tolerance` metres), or None."""
    heads = smpl_math.points_to_z_up(motion.rest_joints)
    for obj in scene.objects:
        if obj == exclude or obj.type != "ARMATURE" or not all(name in obj.data.bones for name in motion.names):
            continue
        found = np.array([tuple(obj.data.bones[name].head_local) for name in motion.names])
        if np.abs(found - heads).max() < tolerance:
            return obj
    return None


@dataclass
class Outcome:
    """What applying a generation did: takes written, warnings (flags, blocks, failures) for the user."""

    written: int = 0
    flagged: int = 0
    blocked: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self, prompt: str) -> str:
        """One line for the status bar and the panel."""
        if self.written == 0:
            return f"Nothing written for '{prompt}': " + ("; ".join(self.warnings) or "the server returned no motion")
        text = f"{self.written} take(s) for '{prompt}'"
        if self.flagged:
            text += f", {self.flagged} flagged"
        if self.blocked:
            text += f", {self.blocked} blocked"
        return text


def _take_label(prompt: str, seed: int) -> str:
    short = prompt if len(prompt) <= 28 else prompt[:27] + "…"
    return f"{short} #{seed}"


def _worst(records: list[dict | None]) -> dict | None:
    """The record to show as 'last result': a blocked one, else the flagged one with the most hits, else the first."""
    screened = [r for r in records if r is not None]
    if not screened:
        return None
    return max(screened, key=lambda r: (r.get("decision") == "blocked", bool(r.get("flagged")), r.get("hit_ratio", 0)))


def apply_motions(context: bpy.types.Context, scene: bpy.types.Scene, motions: list[Motion], frame_start: int,
                  model: str, body: BodyModel | None = None, policy: str = "", server: str = "",
                  rest_match_m: float = REST_MATCH_M) -> Outcome:
    """Write the takes of decoded motions into the scene (SMPL armature, actions, retarget, safety records); an SMPL
    armature is reused when its rest joints lie within `rest_match_m` of the motion's, and each new one gets `body`'s
    mesh skinned to it when one is given. A target that cannot be mapped keeps the SMPL
    takes (with a warning) and opens the bone-mapping editor on it. Anything that fails while writing takes back
    everything this call wrote."""
    settings = scene.safemotion
    outcome = Outcome()
    target = settings.target_armature
    fit, unmapped = None, ""
    if target is not None and any(not m.blocked for m in motions):
        try:
            fit = mapping_editor.rig_fit(target, settings.bone_preset)  # the rig is checked once for every take
        except ValueError as err:
            unmapped = str(err)
    with scene_guard.keep_file_on_failure():
        first_take = len(settings.takes)
        for motion in motions:
            label = _take_label(motion.prompt, motion.seed)
            actions: list[bpy.types.Action] = []
            if motion.blocked:
                outcome.blocked += 1
            else:
                take = _write_take(context, scene, motion, label, frame_start, target, fit, body, rest_match_m)
                actions = [bpy.data.actions.get(take.action_name), bpy.data.actions.get(take.target_action_name)]
                outcome.written += 1
                outcome.flagged += take.safety.flagged
                outcome.warnings += [f"Take '{label}' (from scene frame {frame_start}): {warning}"
                                     for warning in motion.seam_warnings]
            record = motion.safety
            if record is not None and (motion.blocked or record.get("flagged") or record.get("decision") != "pass"):
                outcome.warnings.append(safety.record_generation(scene, label, motion.safety, actions, motion.fps,
                                                                 frame_start, motion.prompt, model, motion.seed,
                                                                 policy, server))
        if outcome.written:
            settings.active_take = first_take
            apply_take(scene, settings.takes[first_take])
            scene.frame_end = max(scene.frame_end, *(t.frame_start + t.frames - 1 for t in settings.takes[first_take:]))
    safety.fill_safety(settings.last_safety, _worst([m.safety for m in motions]))
    if unmapped and outcome.written:
        outcome.warnings.append(f"Not retargeted onto {target.name!r}, the SMPL take(s) are kept: {unmapped}")
        mapping_editor.request_mapping(context, target, unmapped)
    return outcome


def _write_take(context: bpy.types.Context, scene: bpy.types.Scene, motion: Motion, label: str, frame_start: int,
                target: bpy.types.Object | None, fit: retarget.RigFit | None,
                body: BodyModel | None, rest_match_m: float) -> bpy.types.PropertyGroup:
    """One take: the motion keyed on an SMPL armature (reused or built, skinned with `body` when new), retargeted
    onto the target, listed."""
    rig = find_smpl_armature(scene, motion, exclude=target, tolerance=rest_match_m)
    if rig is None:
        # Bones are created in edit mode, entered from object mode: leave the user's mode meanwhile.
        mode = context.object.mode if context.object is not None else "OBJECT"
        if mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        rig = armature.build_smpl_armature(SMPL_ARMATURE_NAME, motion.names, motion.parents, motion.rest_joints)
        if body is not None:
            order = [body.names.index(name) for name in motion.names]  # the body's joints in the motion's order
            weights = body.weights[:, order]
            vertices = armature.align_body_to_rest(body.vertices, weights, body.rest_joints[order],
                                                   motion.rest_joints)
            armature.build_body_mesh(rig, motion.names, vertices, body.faces, weights)
        if mode != "OBJECT":
            bpy.ops.object.mode_set(mode=mode)  # build_smpl_armature gave the active object back
    render = scene.render
    scene_fps = render.fps / render.fps_base
    # Keys land on whole scene frames: the motion is resampled to the scene's rate first.
    pose, transl = smpl_math.resample_motion(motion.pose, motion.transl, motion.fps, scene_fps)
    action = armature.apply_smpl_motion(rig, pose, transl, fps=scene_fps, action_name=f"SafeMotion {label}",
                                        frame_start=frame_start, names=motion.names)
    action.use_fake_user = True  # takes that are not applied must survive saving
    take = scene.safemotion.takes.add()
    take.name, take.prompt, take.seed = label, motion.prompt, motion.seed
    take.frames, take.frame_start = len(pose), frame_start
    take.armature, take.action_name = rig, action.name
    take.foot_cleanup = motion.foot_cleanup
    take.base_tokens = "" if motion.base_tokens is None else ",".join(str(int(i)) for i in motion.base_tokens)
    take.seam_warnings = "\n".join(motion.seam_warnings)
    if fit is not None:
        target_action, _ = armature.retarget_onto(target, pose, transl, motion.rest_joints, fit=fit,
                                                  fps=scene_fps, action_name=f"{target.name} {label}",
                                                  frame_start=frame_start)
        target_action.use_fake_user = True
        take.target, take.target_action_name = target, target_action.name
    safety.fill_safety(take.safety, motion.safety)
    return take


def apply_take(scene: bpy.types.Scene, take: bpy.types.PropertyGroup) -> None:
    """Make a take's actions the active actions of its SMPL armature and target and fit the scene's end frame to it;
    ValueError when something is gone."""
    pairs = [(take.armature, take.action_name)]
    if take.target_action_name:
        pairs.append((take.target, take.target_action_name))
    for obj, action_name in pairs:
        action = bpy.data.actions.get(action_name)
        if obj is None or action is None:
            raise ValueError(f"take '{take.name}': its armature or action {action_name!r} no longer exists; "
                             "discard the take")
    for obj, action_name in pairs:
        keyframes.assign_action(obj, bpy.data.actions[action_name])
    scene.frame_end = max(take.frame_start + max(take.frames - 1, 0), scene.frame_start)


# ---------------------------------------------------------------------------------------------- the job

def _connect_and_submit(connect: Callable[[], BackendClient], payload: dict,
                        cancelled: threading.Event) -> tuple[BackendClient, str]:
    """Request thread: reach the server and submit the job (dropped again if the user cancelled meanwhile)."""
    client = connect()
    return client, submit_job(client, payload, cancelled)


def _connect_and_edit(connect: Callable[[], BackendClient], payload: dict) -> tuple[BackendClient, list[Motion], str]:
    """Request thread: reach the server and send an edit (POST /v1/edit answers with the motions); the motions
    decoded (numpy only) and the model's name."""
    client = connect()
    answer = client.edit(payload)
    motions = [decode_motion(m, f"edit motion {k}") for k, m in enumerate(answer.get("motions", []))]
    return client, motions, str(answer.get("model", ""))


def _fetch_motions(client: BackendClient, job_id: str) -> tuple[list[Motion], list[str]]:
    """Request thread: a finished job's motions, decoded (numpy only), and the errors of its failed items."""
    return motions_of_results(client.results(job_id))


def _fetch_body_model(client: BackendClient) -> BodyModel | None:
    """Request thread: the server's body model, decoded; None when it has none."""
    payload = client.body_model()
    return None if payload is None else decode_body_model(payload)


class GenerationJob:
    """One generation: (bundled server start,) submit, poll, fetch, apply. Every step raises BackendError.

    Every request runs on the job's `RequestThread`; `start` and `step` only queue requests and read their answers,
    so they return at once whatever the server does. Only `finish` writes into the scene. The job is recorded with
    `scene_guard` while it runs (that is how `running_job` finds it). `request` and `frame_start` default to the
    scene's settings (Generate)."""

    SUBMITTING, RUNNING, FETCHING, BODY, READY, DONE, CANCELLED = (
        "submitting", "running", "fetching", "body", "ready", "done", "cancelled")
    NOUN = "Generation"
    REST_MATCH = REST_MATCH_M  # how close a reused SMPL armature's rest joints must be (apply_motions)

    def __init__(self, context: bpy.types.Context, request: tuple[dict, int] | None = None,
                 frame_start: int | None = None):
        self.scene = context.scene
        self.settings = self.scene.safemotion
        self.payload, self.seed = request or job_request(self.settings)
        self.prompt = self.payload["prompt"] if "prompt" in self.payload else self.payload["items"][0]["prompt"]
        if frame_start is None:
            frame_start = self.scene.frame_current if self.settings.start_at_playhead else self.scene.frame_start
        self.frame_start = frame_start
        self.prefs = addon_preferences(context)
        self.client: BackendClient | None = None
        self.job_id = ""
        self.model = ""
        self.state = ""
        self.progress = 0.0
        self.motions: list[Motion] = []
        self.body: BodyModel | None = None
        self.errors: list[str] = []  # failed items and a missing body mesh: warnings once the takes are written
        self.requests: RequestThread | None = None
        self._pending: Future | None = None
        self._cancelled = threading.Event()
        self._next_poll = 0.0
        self.last_answer = self.last_progress = time.monotonic()

    def start(self, context: bpy.types.Context) -> None:
        """Queue the submission (after starting the bundled server, if that is the backend) and return at once."""
        connect = connector(context, self._cancelled)
        self.requests = RequestThread(f"SafeMotion {self.NOUN.lower()}: {self.prompt[:40]}")
        self._pending = self.requests.call(*self._submission(connect))
        self.state = self.SUBMITTING
        scene_guard.claim(self.scene, self, f"A {self.NOUN.lower()}")
        server = backend_process.current()
        starting = self.prefs.backend_mode == "BUNDLED" and (server is None or not server.running)
        self._set_status("Starting the SafeMotion server (loading the model)…" if starting
                         else "Sending the prompt to the SafeMotion server…")

    def _submission(self, connect: Callable[[], BackendClient]) -> tuple:
        """The first request-thread call and its arguments: reach the server and submit the job."""
        return _connect_and_submit, connect, self.payload, self._cancelled

    def _submitted(self, answer: tuple[BackendClient, str]) -> None:
        """Take in the first call's answer: the job runs on the server."""
        self.client, self.job_id = answer
        self.settings.job_id = self.job_id
        self.state = self.RUNNING
        self.last_answer = self.last_progress = time.monotonic()
        self._set_status(f"Generating {len(self.payload['items'])} take(s) from seed {self.seed}…")

    def step(self, context: bpy.types.Context) -> bool:
        """Read what the request thread has answered and queue the next request; True once the motions are here
        (call `finish` then). Never waits for the server."""
        if self.state == self.CANCELLED:
            raise BackendError(f"{self.NOUN} cancelled; nothing was written")
        if self.state in (self.READY, self.DONE):
            return True
        pending = self._pending
        if pending is not None and not pending.done():
            return False
        self._pending = None
        if self.state == self.SUBMITTING:
            self._submitted(pending.result())
        elif self.state == self.RUNNING:
            if pending is None:
                if time.monotonic() >= self._next_poll:
                    self._pending = self.requests.call(self.client.job, self.job_id)
                return False
            self._next_poll = time.monotonic() + POLL_INTERVAL_S
            if self._read_status(pending):
                self.state = self.FETCHING
                self._pending = self.requests.call(_fetch_motions, self.client, self.job_id)
        elif self.state == self.FETCHING:
            self.motions, self.errors = pending.result()
            if self._needs_body():
                self.state = self.BODY
                self._pending = self.requests.call(_fetch_body_model, self.client)
                return False
            self.state = self.READY
        elif self.state == self.BODY:
            try:
                self.body = pending.result()
            except BackendError as err:  # the takes are still worth writing, as bare armatures
                self.errors.append(f"No body mesh: {err}")
            self.state = self.READY
        return self.state == self.READY

    def _read_status(self, pending: Future) -> bool:
        """Take in one job status answer; whether the job is done on the server."""
        try:
            status = pending.result()
        except BackendError as err:
            if err.status is not None or time.monotonic() - self.last_answer > self.prefs.timeout:
                raise
            return False  # no answer this time: ask again on a later tick
        now = time.monotonic()
        self.last_answer = now
        finished = status.get("done", 0) + status.get("failed", 0) + status.get("cancelled", 0)
        progress = finished / max(status.get("total", 1), 1)
        if progress > self.progress:
            self.last_progress = now
        elif now - self.last_progress > STALL_LIMIT_S:
            raise BackendError(f"no take finished in {STALL_LIMIT_S:g} s; the server is busy or stuck. "
                               "The generation was cancelled.")
        self.progress = progress
        self.model = status.get("model", self.model)
        self.settings.progress = progress
        self._set_status(f"Generating: {finished}/{status.get('total', 0)} take(s) done")
        if status.get("status") == "cancelled":
            raise BackendError("the job was cancelled on the server; nothing was written")
        return status.get("status") == "done"

    def _needs_body(self) -> bool:
        """Whether skinning is on and some motion needs a new SMPL armature (which gets the server's body mesh)."""
        target = self.settings.target_armature
        return self.settings.skin_body and not all(m.blocked or find_smpl_armature(self.scene, m, exclude=target)
                                                   for m in self.motions)

    def finish(self, context: bpy.types.Context) -> Outcome:
        """Write the takes of the fetched motions (after `step` returned True)."""
        try:
            outcome = apply_motions(context, self.scene, self.motions, self.frame_start, self.model, self.body,
                                    self.payload["policy"], self.client.base_url, self.REST_MATCH)
        except ValueError as err:  # the target cannot be mapped, or bad data for Blender
            raise BackendError(f"Nothing written: {err}") from None
        outcome.warnings += self.errors
        self.state = self.DONE
        self._close(outcome.summary(self.prompt))
        return outcome

    def cancel(self) -> None:
        """Cancel on the server (best effort, from the request thread) and write nothing; returns at once."""
        if self.state in (self.DONE, self.CANCELLED):
            return
        self._cancelled.set()
        if self._pending is not None:
            self._pending.cancel()  # a request still queued never runs
        if self.job_id and self.requests is not None:
            self.requests.call(cancel_quietly, self.client, self.job_id)
        self.state = self.CANCELLED
        self._close(f"{self.NOUN} cancelled; nothing was written")

    def fail(self, message: str) -> None:
        """End after an error: cancel the job on the server if it runs, write nothing, keep the message."""
        self.cancel()
        self._set_status(message)

    def run_blocking(self, context: bpy.types.Context) -> Outcome:
        """Background mode: start, step until the motions are here, write the takes (BackendError on failure,
        nothing written)."""
        try:
            self.start(context)
            while not self.step(context):
                time.sleep(BLOCKING_STEP_S)
            return self.finish(context)
        except BackendError as err:
            self.fail(str(err))
            raise
        except BaseException:  # a bug or an interrupt: the scene must not stay marked busy
            self.cancel()
            raise

    def _close(self, status: str) -> None:
        """Release the scene and end the request thread (after a queued cancel request has run)."""
        scene_guard.release(self)
        if self.requests is not None:
            self.requests.close()
        try:
            self.settings.job_id = ""
            self.settings.progress = 0.0
            self._set_status(status)
        except ReferenceError:  # the scene was removed meanwhile
            pass

    def _set_status(self, text: str) -> None:
        self.settings.status = text


class EditJob(GenerationJob):
    """One edit of takes (POST /v1/edit answers with the motions at once): sent from the request thread, then written
    like a generation's takes; a new take reuses only an SMPL armature with its own skeleton (EDIT_REST_MATCH_M)."""

    NOUN = "Edit"
    REST_MATCH = EDIT_REST_MATCH_M

    def _submission(self, connect: Callable[[], BackendClient]) -> tuple:
        return _connect_and_edit, connect, self.payload

    def _submitted(self, answer: tuple[BackendClient, list[Motion], str]) -> None:
        self.client, self.motions, self.model = answer
        self.state = self.READY


def running_job(scene: bpy.types.Scene) -> GenerationJob | None:
    """The generation in flight for this scene, if any."""
    writer = scene_guard.writer_of(scene)
    return writer if isinstance(writer, GenerationJob) else None


def cancel_all() -> None:
    """Cancel every generation in flight (file load, add-on disabled); returns at once."""
    for writer in scene_guard.writers():
        if isinstance(writer, GenerationJob):
            writer.cancel()


@bpy.app.handlers.persistent
def cancel_on_load(*_args) -> None:
    """load_pre handler: a new file must not receive the takes of a generation started in the old one."""
    cancel_all()


# ---------------------------------------------------------------------------------------------- operators

def _redraw(context: bpy.types.Context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class JobOperator:
    """An operator that runs a `GenerationJob` (or an `EditJob`): a modal timer in invoke (Esc cancels), a blocking
    loop in execute (background mode, scripts)."""

    bl_options = {"REGISTER", "UNDO"}

    _job: GenerationJob | None = None
    _timer = None

    def make_job(self, context: bpy.types.Context) -> GenerationJob:
        """The job to run (ValueError or BackendError: refused, with the reason)."""
        raise NotImplementedError

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Blocking run (background mode, scripts)."""
        try:
            outcome = self.make_job(context).run_blocking(context)
        except (ValueError, BackendError) as err:
            context.scene.safemotion.status = str(err)
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return self._report(context.scene.safemotion, outcome)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if bpy.app.background:
            return self.execute(context)
        try:
            self._job = self.make_job(context)
            self._job.start(context)
        except (ValueError, BackendError) as err:
            if self._job is not None:
                self._job.fail(str(err))
            context.scene.safemotion.status = str(err)
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(POLL_INTERVAL_S, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0.0, 1.0)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        job = self._job
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
            self.report({"INFO"}, f"{job.NOUN} cancelled; nothing was written")
            return self._end(context, {"CANCELLED"})
        if job.state == job.CANCELLED:  # the Cancel button or a file load
            return self._end(context, {"CANCELLED"})
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            if not job.step(context):
                context.window_manager.progress_update(job.progress)
                context.workspace.status_text_set(job.settings.status)
                _redraw(context)
                return {"RUNNING_MODAL"}
            outcome = job.finish(context)
        except BackendError as err:
            job.fail(str(err))
            self.report({"ERROR"}, str(err))
            return self._end(context, {"CANCELLED"})
        except Exception:  # a bug: end the job so that the scene does not stay marked busy
            job.cancel()
            self._end(context, {"CANCELLED"})
            raise
        return self._end(context, self._report(job.settings, outcome))

    def cancel(self, context: bpy.types.Context) -> None:
        """Blender ends the operator (window closed, file loaded): cancel the job."""
        if self._job is not None:
            self._job.cancel()
        self._end(context, {"CANCELLED"})

    def _end(self, context: bpy.types.Context, result: set[str]) -> set[str]:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
            wm.progress_end()
            if context.workspace is not None:
                context.workspace.status_text_set(None)
        _redraw(context)
        return result

    def _report(self, settings: bpy.types.PropertyGroup, outcome: Outcome) -> set[str]:
        """Report the warnings and the summary; FINISHED (one undo step) only when something was written."""
        for warning in outcome.warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"} if outcome.written else {"WARNING"}, settings.status)
        return {"FINISHED"} if outcome.written else {"CANCELLED"}


class SAFEMOTION_OT_generate(JobOperator, bpy.types.Operator):
    """Generate motion from the prompt on the SafeMotion server (Esc cancels)"""

    bl_idname = "safemotion.generate"
    bl_label = "Generate"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return scene_guard.poll_free(cls, context)

    def make_job(self, context: bpy.types.Context) -> GenerationJob:
        return GenerationJob(context)


class SAFEMOTION_OT_cancel_generation(bpy.types.Operator):
    """Cancel the generation or edit in flight: the server drops the job and nothing is written"""

    bl_idname = "safemotion.cancel_generation"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and running_job(context.scene) is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        running_job(context.scene).cancel()
        return {"FINISHED"}


class _TakeOperator:
    """An operator on the scene's take number `index` (set by the takes list's buttons)."""

    bl_options = {"REGISTER", "UNDO"}

    index: bpy.props.IntProperty(name="Take", min=0)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return scene_guard.poll_free(cls, context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        takes = context.scene.safemotion.takes
        if self.index >= len(takes):
            self.report({"ERROR"}, f"There is no take {self.index + 1}")
            return {"CANCELLED"}
        return self.run(context, takes[self.index])

    def run(self, context: bpy.types.Context, take: bpy.types.PropertyGroup) -> set[str]:
        """Do the operator's job on the take."""
        raise NotImplementedError


class SAFEMOTION_OT_apply_take(_TakeOperator, bpy.types.Operator):
    """Make this take the active animation of its armatures"""

    bl_idname = "safemotion.apply_take"
    bl_label = "Apply Take"

    def run(self, context: bpy.types.Context, take: bpy.types.PropertyGroup) -> set[str]:
        try:
            apply_take(context.scene, take)
        except ValueError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        context.scene.safemotion.active_take = self.index
        if take.safety.flagged:
            self.report({"WARNING"}, f"Take '{take.name}' was flagged: {take.safety.reason}")
        return {"FINISHED"}


class SAFEMOTION_OT_discard_take(_TakeOperator, bpy.types.Operator):
    """Delete this take's actions and remove it from the list (flagged generations stay in the safety list)"""

    bl_idname = "safemotion.discard_take"
    bl_label = "Discard Take"

    def run(self, context: bpy.types.Context, take: bpy.types.PropertyGroup) -> set[str]:
        for name in (take.action_name, take.target_action_name):
            action = bpy.data.actions.get(name) if name else None
            if action is not None:
                bpy.data.actions.remove(action)
        settings = context.scene.safemotion
        settings.takes.remove(self.index)
        settings.active_take = min(settings.active_take, max(len(settings.takes) - 1, 0))
        return {"FINISHED"}


CLASSES = (SAFEMOTION_OT_generate, SAFEMOTION_OT_cancel_generation, SAFEMOTION_OT_apply_take,
           SAFEMOTION_OT_discard_take)
