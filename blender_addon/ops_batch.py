"""Batch generation: many prompts (a text block or a .txt/.csv file) → one server job → takes one after another.

The batch lives in the scene (`scene.safemotion_batch`, saved with the .blend): every prompt with its state, the
server job and item it was sent as, and the action it became. A `BatchRunner` works from that state alone, so the same
loop serves a new batch and "Resume": pending prompts are submitted (one job of up to MAX_JOB_ITEMS prompts), queued
ones are polled, finished ones are applied, one named action each, as a strip on the batch's one NLA track
(`BATCH_TRACK`) of its armature (the panel's target, retargeted, or an SMPL armature made for the batch). Every prompt
has its own place on that track, fixed when the batch starts from the prompts' durations in prompt order, so the takes
play one after another in the order of the prompt list whatever order they finish in (and Resume fills the same
places). Selecting a prompt in the list fits the timeline's preview range to its take. A job the server no longer knows
(404: restarted with another database) has its unfinished prompts submitted again; finished prompts are never redone.
Blocked prompts leave their place empty and are recorded in the safety list.

Every server request runs on the runner's `RequestThread` (request_thread.py), which never touches bpy; in the UI a
modal timer drives the runner, each tick only reading answers and writing the scene, and Esc or Cancel Batch return at
once (server jobs cancelled from that thread, a submission in flight dropped when it answers, applied prompts kept). A
file load or disabling the add-on stops the runner without cancelling the jobs the batch records (Resume continues
them). In background mode, or when called from a script, the operators run the same steps in a loop.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import bpy
from bpy.app.handlers import persistent
from bpy.props import CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import armature, batch_prompts, mapping_editor, retarget, safety, scene_guard, smpl_math
from .client import BackendClient, BackendError, cancel_quietly, decode_array, submit_job
from .preferences import connector
from .properties import is_armature
from .request_thread import BLOCKING_STEP_S, RequestThread

MAX_JOB_ITEMS = 256  # the server's limit on prompts per job
POLL_INTERVAL_S = 0.25  # between status polls, and between the modal operator's timer ticks
STALL_TIMEOUT_S = 600.0  # a synchronous run gives up when no prompt has progressed for this long
BATCH_TRACK = "SafeMotion batch"  # the NLA track that holds a batch's takes, one after another
GAP_FRAMES = 5  # frames left empty after each take's place (the model may round a duration up a little)

ITEM_STATES = (
    ("PENDING", "Pending", "Not sent to the server yet (or sent again after the server lost it)", "TIME", 0),
    ("QUEUED", "Queued", "Sent; the server is working on it", "SORTTIME", 1),
    ("DONE", "Done", "Applied as an action on its own NLA track", "CHECKMARK", 2),
    ("BLOCKED", "Blocked", "Flagged and withheld by the Block safety policy: nothing was written", "CANCEL", 3),
    ("FAILED", "Failed", "The server could not generate it (Resume tries again)", "ERROR", 4),
    ("CANCELLED", "Cancelled", "Cancelled before it was applied (Resume generates it)", "X", 5),
)
STATE_ICONS = {identifier: icon for identifier, _, _, icon, _ in ITEM_STATES}
FINAL_STATES = {"DONE", "BLOCKED"}


class SafeMotionBatchItem(bpy.types.PropertyGroup):
    """One prompt of a batch; `name` is its (unique) action name."""

    prompt: StringProperty(name="Prompt")
    seconds: FloatProperty(name="Seconds")
    seed: IntProperty(name="Seed")
    line: IntProperty(name="Line", description="Line of the prompt in its text or file")
    state: EnumProperty(name="State", items=ITEM_STATES, default="PENDING")
    job_id: StringProperty(name="Job", description="Server job the prompt was last sent as")
    job_index: IntProperty(name="Job Item", description="The prompt's index in that job")
    action: PointerProperty(name="Action", type=bpy.types.Action)
    message: StringProperty(name="Message", description="Server error or safety note")
    frame_start: IntProperty(name="Start Frame", description="Where the prompt's take starts on the batch track")


def _active_item_changed(batch: SafeMotionBatch, context: bpy.types.Context) -> None:
    fit_timeline(context.scene, batch)


class SafeMotionBatch(bpy.types.PropertyGroup):
    """Where a batch's prompts come from, and the batch in progress (saved with the file for Resume)."""

    source: EnumProperty(name="Prompts From", items=(
        ("TEXT", "Text Block", "One prompt per line of a text block in this file"),
        ("FILE", "File", "A .txt file (one prompt per line) or a .csv file with a 'prompt' column"),
    ), default="TEXT")
    text: PointerProperty(name="Text", type=bpy.types.Text, description="Text block with one prompt per line")
    filepath: StringProperty(name="File", subtype="FILE_PATH", description=".txt or .csv prompt file")
    items: CollectionProperty(type=SafeMotionBatchItem)
    active_item: IntProperty(name="Active Prompt", update=_active_item_changed,
                             description="The selected prompt; the timeline's preview range is fitted to its take")
    origin: StringProperty(name="Read From", description="Text block or file the batch was read from")
    policy: StringProperty(name="Policy", description="Safety policy the batch is generated under")
    target: PointerProperty(name="Target", type=bpy.types.Object, poll=is_armature,
                            description="Armature the prompts are retargeted onto (empty: an SMPL armature)")
    bone_preset: StringProperty(name="Bone Mapping", default="AUTO")
    smpl_armature: PointerProperty(name="SMPL Armature", type=bpy.types.Object,
                                   description="Armature made for the batch when there is no target")
    frame_start: IntProperty(name="Start Frame", default=1)


def batch_counts(batch: SafeMotionBatch) -> dict[str, int]:
    """Number of prompts in each state."""
    counts = {identifier: 0 for identifier, *_ in ITEM_STATES}
    for item in batch.items:
        counts[item.state] += 1
    return counts


def batch_unfinished(batch: SafeMotionBatch) -> bool:
    """Whether some prompt still has to be generated (Resume has work)."""
    return any(item.state not in FINAL_STATES for item in batch.items)


# --- starting a batch -----------------------------------------------------------------------------------------------


def read_batch_source(batch: SafeMotionBatch) -> tuple[list[batch_prompts.BatchPrompt], str]:
    """The prompts of the chosen text block or file, and where they were read; ValueError with a line number."""
    if batch.source == "TEXT":
        if batch.text is None:
            raise ValueError("no text block chosen: pick the text block that lists the prompts")
        return batch_prompts.parse_text(batch.text.as_string(), batch.text.name), batch.text.name
    if not batch.filepath:
        raise ValueError("no prompt file chosen: pick a .txt or .csv file")
    path = bpy.path.abspath(batch.filepath)
    return batch_prompts.read_prompt_file(path), path


def start_batch(scene: bpy.types.Scene, prompts: list[batch_prompts.BatchPrompt], origin: str) -> None:
    """Replace the scene's batch with these prompts (all pending) and the panel's settings at this moment.

    A target armature whose bones the mapping cannot drive raises ValueError before anything changes.
    """
    settings = scene.safemotion
    batch = scene.safemotion_batch
    if settings.target_armature is not None:
        mapping_editor.rig_fit(settings.target_armature, settings.bone_preset)
    seed = random.randrange(batch_prompts.MAX_SEED + 1) if settings.random_seed else settings.seed
    batch.items.clear()
    batch.active_item = 0
    batch.origin = origin
    batch.policy = settings.policy.lower()
    batch.target = settings.target_armature
    batch.bone_preset = settings.bone_preset
    batch.smpl_armature = None
    batch.frame_start = scene.frame_start
    render = scene.render
    frame = scene.frame_start
    for prompt in prompts:
        item = batch.items.add()
        item.name = prompt.name
        item.prompt = prompt.prompt
        item.seconds = settings.seconds if prompt.seconds is None else prompt.seconds
        item.seed = seed if prompt.seed is None else prompt.seed
        item.line = prompt.line
        item.frame_start = frame
        frame += math.ceil(item.seconds * render.fps / render.fps_base) + 1 + GAP_FRAMES


def fit_timeline(scene: bpy.types.Scene, batch: SafeMotionBatch) -> None:
    """Fit the preview range to the selected prompt's take and put the playhead on its first frame."""
    if not 0 <= batch.active_item < len(batch.items):
        return
    item = batch.items[batch.active_item]
    if item.action is None:
        return
    first, last = (int(round(f)) for f in item.action.frame_range)
    scene.use_preview_range = True
    scene.frame_preview_start, scene.frame_preview_end = first, max(last, first + 1)
    scene.frame_current = first


def reopen_batch(batch: SafeMotionBatch) -> None:
    """Make failed and cancelled prompts pending again (Resume); queued ones keep their job."""
    for item in batch.items:
        if item.state in ("FAILED", "CANCELLED"):
            item.state, item.job_id, item.message = "PENDING", "", ""


# --- the runner -----------------------------------------------------------------------------------------------------


class BatchRunner:
    """Moves a scene's batch forward: submit pending prompts, poll their jobs, apply finished ones.

    Every server request (reaching the server, submit, status, results, cancel) runs on the runner's `RequestThread`,
    one at a time; `step` takes in the last answer, queues the next request and applies fetched motions, so it never
    waits for the server. The preferences are read here: the server is reached (the bundled one started) on that
    thread."""

    def __init__(self, scene: bpy.types.Scene, context: bpy.types.Context):
        self.scene = scene
        self.stopped = threading.Event()  # set by cancel/stop: no request is queued, no answer is read any more
        self.connect = connector(context, self.stopped)
        self.client: BackendClient | None = None
        self._motions: dict[tuple[str, int], dict] = {}  # fetched, not yet applied: (job, index) -> motion
        self._models: dict[str, str] = {}  # job -> model name (for the flagged list)
        self.warnings: list[str] = []  # flagged prompts, to report
        self._fit: retarget.RigFit | None = None  # the target checked once for every prompt this run applies
        self.requests = RequestThread("SafeMotion batch")
        self._pending: tuple[Future, Callable[[Any], None]] | None = None  # the request in flight, its reader
        self._next_poll = 0.0

    @property
    def batch(self) -> SafeMotionBatch:
        return self.scene.safemotion_batch

    def finished(self) -> bool:
        """No prompt is pending or queued."""
        return not any(item.state in ("PENDING", "QUEUED") for item in self.batch.items)

    def step(self, max_apply: int | None = None) -> int:
        """One timer tick: read the request thread's answer (raising its BackendError), queue the next request, and
        apply at most `max_apply` fetched prompts (all when None); returns how many were applied. Never waits."""
        if self.stopped.is_set():
            return 0
        if self._pending is not None and self._pending[0].done():
            future, read = self._pending
            self._pending = None
            read(future.result())
        if self._pending is None:
            self._queue_next()
        applied = self.apply_ready(max_apply)
        if self.finished():
            self.requests.close()
        return applied

    def _queue_next(self) -> None:
        """Queue the next request: reach the server, else send pending prompts, else (every POLL_INTERVAL_S) poll."""
        if self.client is None:
            self._pending = (self.requests.call(self.connect), self._connected)
            return
        pending = [item for item in self.batch.items if item.state == "PENDING"][:MAX_JOB_ITEMS]
        if pending:
            # Seconds are rounded: the float32 property holds 9.8 as 9.80000019, which the server would refuse.
            payload = {"policy": self.batch.policy,
                       "items": [{"prompt": item.prompt, "seconds": round(item.seconds, 3), "seed": item.seed,
                                  "variations": 1} for item in pending]}
            names = [item.name for item in pending]
            self._pending = (self.requests.call(submit_job, self.client, payload, self.stopped),
                             lambda job_id: self._submitted(names, job_id))
            return
        queued: dict[str, set[int]] = {}
        for item in self.batch.items:
            if item.state == "QUEUED" and (item.job_id, item.job_index) not in self._motions:
                queued.setdefault(item.job_id, set()).add(item.job_index)
        if queued and time.monotonic() >= self._next_poll:
            # Results pages hold every item of the job: fetch again only once the last fetch is used up.
            fetch = {job for job in queued if not any(key[0] == job for key in self._motions)}
            self._pending = (self.requests.call(_poll_jobs, self.client, queued, fetch), self._polled)

    def _connected(self, client: BackendClient) -> None:
        self.client = client

    def _submitted(self, names: list[str], job_id: str) -> None:
        """The prompts `names` went out as job `job_id`."""
        by_name = {item.name: item for item in self.batch.items}
        for index, name in enumerate(names):
            item = by_name[name]
            item.state, item.job_id, item.job_index = "QUEUED", job_id, index

    def _polled(self, answers: dict[str, tuple[dict | None, dict | None]]) -> None:
        """Update queued prompts from their jobs' status (None: the server lost the job) and keep fetched motions."""
        self._next_poll = time.monotonic() + POLL_INTERVAL_S
        for job_id, (status, results) in answers.items():
            items = {item.job_index: item for item in self.batch.items
                     if item.state == "QUEUED" and item.job_id == job_id}
            if status is None:
                for item in items.values():  # the server lost the job: send these prompts again
                    item.state, item.job_id, item.message = "PENDING", "", "sent again: the server lost its job"
                continue
            self._models[job_id] = status.get("model", "")
            for entry in status.get("items", []):
                item = items.get(entry["index"])
                if item is None:
                    continue
                if entry["status"] == "failed":
                    item.state, item.message = "FAILED", entry.get("error") or "generation failed"
                elif entry["status"] == "cancelled":
                    item.state, item.message = "CANCELLED", "cancelled on the server"
            for entry in (results or {}).get("items", []):
                item = items.get(entry["index"])
                if entry["status"] == "done" and item is not None and item.state == "QUEUED" and entry.get("motions"):
                    self._motions[(job_id, entry["index"])] = entry["motions"][0]

    def apply_ready(self, max_apply: int | None = None) -> int:
        """Apply fetched motions of still-queued prompts, in batch order; returns how many were applied."""
        applied = 0
        for item in self.batch.items:
            if max_apply is not None and applied >= max_apply:
                break
            motion = self._motions.pop((item.job_id, item.job_index), None) if item.state == "QUEUED" else None
            if motion is None:
                continue
            if self.batch.target is not None and self._fit is None:
                self._fit = mapping_editor.rig_fit(self.batch.target, self.batch.bone_preset)
            warning = apply_motion(self.scene, item, motion, self._models.get(item.job_id, ""), self.client.base_url,
                                   self._fit)
            if warning:
                self.warnings.append(warning)
            applied += 1
        return applied

    def stop(self) -> None:
        """Stop at once and read no more answers (file load, add-on disabled): jobs the batch records stay on the
        server for Resume; a submission still in flight is dropped on the server when it answers (nothing records
        its job)."""
        self.stopped.set()
        if self._pending is not None:
            self._pending[0].cancel()  # a request still queued never runs
            self._pending = None
        self.requests.close()
        self._motions.clear()

    def cancel(self) -> int:
        """Mark unfinished prompts cancelled and cancel their jobs on the server from the request thread (applied
        prompts stay); returns at once with how many prompts were cancelled."""
        jobs, cancelled = cancel_batch(self.batch)
        client = self.client
        self.requests.call(cancel_jobs, self.connect if client is None else lambda: client, jobs)
        self.stop()
        return cancelled

    def run(self, stall_timeout: float = STALL_TIMEOUT_S) -> None:
        """Run until no prompt is pending or queued (background mode and scripts: the same steps in a loop)."""
        last_progress = time.monotonic()
        progress = None
        try:
            while True:
                self.step()
                counts = batch_counts(self.batch)
                if self.finished():
                    return
                if counts != progress:
                    progress, last_progress = counts, time.monotonic()
                elif time.monotonic() - last_progress > stall_timeout:
                    raise BackendError(f"the batch made no progress for {stall_timeout:g} s "
                                       f"({counts['DONE']} of {len(self.batch.items)} prompts done); "
                                       "check the server, then use Resume Batch")
                time.sleep(BLOCKING_STEP_S)
        except BaseException:
            self.stop()
            raise


def _poll_jobs(client: BackendClient, queued: dict[str, set[int]],
               fetch: set[str]) -> dict[str, tuple[dict | None, dict | None]]:
    """Request thread: each job's status (None when the server lost it: 404) and, for jobs in `fetch` where one of the
    `queued` prompt indices is newly done, its results."""
    answers = {}
    for job_id, indices in queued.items():
        try:
            status = client.job(job_id)
        except BackendError as err:
            if err.status != 404:
                raise
            answers[job_id] = (None, None)
            continue
        done = any(entry["status"] == "done" and entry["index"] in indices for entry in status.get("items", []))
        answers[job_id] = (status, client.results(job_id) if done and job_id in fetch else None)
    return answers


def cancel_jobs(connect: Callable[[], BackendClient], jobs: list[str]) -> None:
    """Request thread: reach the server and cancel these jobs, best effort."""
    if jobs:
        client = connect()
        for job_id in jobs:
            cancel_quietly(client, job_id)


def cancel_batch(batch: SafeMotionBatch) -> tuple[list[str], int]:
    """Mark the unfinished prompts cancelled; the server jobs they were queued in (to cancel) and how many."""
    jobs = sorted({item.job_id for item in batch.items if item.state == "QUEUED" and item.job_id})
    cancelled = 0
    for item in batch.items:
        if item.state in ("PENDING", "QUEUED"):
            item.state, item.message = "CANCELLED", "cancelled by the user"
            cancelled += 1
    return jobs, cancelled


# --- applying one motion --------------------------------------------------------------------------------------------


def apply_motion(scene: bpy.types.Scene, item: SafeMotionBatchItem, motion: dict, model: str,
                 server: str = "", fit: retarget.RigFit | None = None) -> str | None:
    """Turn a finished prompt's motion into its named action, a strip in its place on the batch track (or mark it
    blocked), recording the safety decision; everything it wrote is taken back when it fails. `fit` is the batch
    target's checked mapping (`mapping_editor.rig_fit`; None: checked now).

    Returns the warning to report when the policy acted on the motion (sanitized, blocked or allowed).
    """
    with scene_guard.keep_file_on_failure():
        return _apply_motion(scene, item, motion, model, server, fit)


def _apply_motion(scene: bpy.types.Scene, item: SafeMotionBatchItem, motion: dict, model: str,
                  server: str, fit: retarget.RigFit | None) -> str | None:
    batch = scene.safemotion_batch
    record = motion.get("safety")
    item.message = ""
    fps = float(motion["fps"])
    seed = int(motion.get("seed", item.seed))
    if motion.get("smpl") is None:
        item.state = "BLOCKED"
        item.message = (record or {}).get("reason") or "withheld by the server's safety policy"
        if record is None:
            return None
        return safety.record_generation(scene, item.name, record, [], fps, item.frame_start, item.prompt, model,
                                        seed, batch.policy, server)
    render = scene.render
    scene_fps = render.fps / render.fps_base
    # Keys land on whole scene frames: the motion is resampled to the scene's rate first.
    pose, transl = smpl_math.resample_motion(decode_array(motion["smpl"]["pose"], "smpl.pose"),
                                             decode_array(motion["smpl"]["transl"], "smpl.transl"), fps, scene_fps)
    skeleton = motion["skeleton"]
    rest = decode_array(skeleton["rest_joints"], "skeleton.rest_joints")
    if batch.target is not None:
        obj = batch.target
        fit = fit or mapping_editor.rig_fit(obj, batch.bone_preset)
        previous = obj.animation_data.action if obj.animation_data else None
        action, _ = armature.retarget_onto(obj, pose, transl, rest, fit=fit, fps=scene_fps,
                                           action_name=item.name, frame_start=item.frame_start)
    else:
        if batch.smpl_armature is None or batch.smpl_armature.name not in scene.objects:
            batch.smpl_armature = armature.build_smpl_armature(
                "SafeMotion batch", skeleton["joint_names"], skeleton["parents"], rest)
        obj = batch.smpl_armature
        previous = obj.animation_data.action if obj.animation_data else None
        action = armature.apply_smpl_motion(obj, pose, transl, fps=scene_fps, action_name=item.name,
                                            frame_start=item.frame_start, names=skeleton["joint_names"])
    action.use_fake_user = True  # a batch take must survive saving even when its strip is deleted
    place_on_track(obj, action, item.frame_start, previous)
    item.action = action
    item.state = "DONE"
    if record is None:
        return None
    action[safety.SAFETY_PROPERTY] = json.dumps(record, sort_keys=True)
    if not record.get("flagged") and record.get("decision") == "pass":
        return None
    item.message = f"{record.get('decision', '')}: {record.get('reason', '')}"
    return safety.record_generation(scene, item.name, record, [action], fps, item.frame_start, item.prompt, model,
                                    seed, batch.policy, server)


def place_on_track(obj: bpy.types.Object, action: bpy.types.Action, frame_start: int,
                   previous: bpy.types.Action | None) -> bpy.types.NlaStrip:
    """Put `action` as a strip named after it at `frame_start` on the object's batch track (made when missing), and
    give `obj` back its previous active action."""
    anim = obj.animation_data
    track = next((t for t in anim.nla_tracks if t.name == BATCH_TRACK), None)
    if track is None:
        track = anim.nla_tracks.new()
        track.name = BATCH_TRACK
    strip = track.strips.new(action.name, int(frame_start), action)
    anim.action = previous
    return strip


# --- operators ------------------------------------------------------------------------------------------------------

def running_batch() -> BatchRunner | None:
    """The batch a modal operator is driving right now (one at a time), as recorded by the scene guard."""
    return next((w for w in scene_guard.writers() if isinstance(w, BatchRunner)), None)


def stop_running() -> None:
    """Stop the running batch at once (file load, add-on disabled): it writes nothing more, and the jobs its saved
    state records stay on the server for Resume."""
    runner = running_batch()
    if runner is not None:
        runner.stop()
        scene_guard.release(runner)


@persistent
def forget_on_load(_filepath) -> None:
    """A file is being loaded: the running batch's scene goes away (its saved state lets Resume continue)."""
    stop_running()


def _redraw(context) -> None:
    if context.screen is None:
        return
    for area in context.screen.areas:
        if area.type in ("VIEW_3D", "NLA_EDITOR"):
            area.tag_redraw()


_ITEM_FIELDS = ("name", "prompt", "seconds", "seed", "line", "state", "job_id", "job_index", "action", "message",
                "frame_start")
_BATCH_FIELDS = ("origin", "policy", "target", "bone_preset", "smpl_armature", "frame_start")


def _batch_state(batch: SafeMotionBatch) -> tuple[dict, list[dict]]:
    """The batch's settings and every prompt's fields (what starting or resuming a batch may change)."""
    return ({f: getattr(batch, f) for f in _BATCH_FIELDS},
            [{f: getattr(item, f) for f in _ITEM_FIELDS} for item in batch.items])


def _restore_batch_state(batch: SafeMotionBatch, state: tuple[dict, list[dict]]) -> None:
    """Put back a state from `_batch_state`."""
    fields, items = state
    for name, value in fields.items():
        setattr(batch, name, value)
    batch.items.clear()
    for values in items:
        item = batch.items.add()
        for name, value in values.items():
            setattr(item, name, value)


class _BatchRun:
    """Shared run logic of Batch Generate and Resume Batch: synchronous in execute, a modal timer in invoke."""

    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if running_batch() is not None:
            cls.poll_message_set("A batch is running: wait for it or cancel it")
            return False
        return scene_guard.poll_free(cls, context)

    def prepare(self, context) -> None:
        """Set up the scene's batch for running (raise ValueError to refuse)."""
        raise NotImplementedError

    def _begin(self, context) -> BatchRunner | None:
        """Prepare the batch and a runner for it (nothing sent yet); on failure the scene's batch is as it was and
        `self._saved` is the way back until a prompt has been sent."""
        batch = context.scene.safemotion_batch
        self._saved = _batch_state(batch)
        try:
            self.prepare(context)
            return BatchRunner(context.scene, context)
        except (ValueError, BackendError) as err:
            _restore_batch_state(batch, self._saved)
            self.report({"ERROR"}, str(err))
            return None

    def _failed(self, runner: BatchRunner, err: Exception) -> None:
        """Report an error that ended the run; a batch none of whose prompts went out is put back as it was."""
        if not any(item.job_id for item in runner.batch.items):
            _restore_batch_state(runner.batch, self._saved)
            self.report({"ERROR"}, str(err))
        else:
            self.report({"ERROR"}, f"{err} ({self._summary(runner.batch)}; Resume Batch continues)")

    def _summary(self, batch: SafeMotionBatch) -> str:
        counts = batch_counts(batch)
        parts = [f"{counts['DONE']} of {len(batch.items)} prompts applied"]
        parts += [f"{counts[s]} {s.lower()}" for s in ("BLOCKED", "FAILED", "CANCELLED") if counts[s]]
        return "SafeMotion batch: " + ", ".join(parts)

    def execute(self, context):
        runner = self._begin(context)
        if runner is None:
            return {"CANCELLED"}
        try:
            runner.run()
        except (BackendError, ValueError) as err:
            self._failed(runner, err)
            return {"CANCELLED"}
        finally:
            self._report_flags(runner)
        self.report({"WARNING"} if batch_unfinished(runner.batch) else {"INFO"}, self._summary(runner.batch))
        return {"FINISHED"}

    def _report_flags(self, runner: BatchRunner) -> None:
        for warning in runner.warnings:
            self.report({"WARNING"}, warning)
        runner.warnings.clear()

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        runner = self._begin(context)
        if runner is None:
            return {"CANCELLED"}
        self._runner = runner
        scene_guard.claim(context.scene, runner, "A batch")
        wm = context.window_manager
        self._timer = wm.event_timer_add(POLL_INTERVAL_S, window=context.window)
        wm.progress_begin(0, max(len(runner.batch.items), 1))
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        runner = self._runner
        if runner.stopped.is_set():  # Cancel Batch, another file loaded, the add-on disabled
            return self._stop(context, {"CANCELLED"})
        if event.type == "ESC":
            runner.cancel()
            self.report({"WARNING"}, self._summary(runner.batch))
            return self._stop(context, {"CANCELLED"})
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            runner.step(max_apply=1)  # one prompt per tick keeps the interface responsive
        except (BackendError, ValueError) as err:
            runner.stop()
            self._failed(runner, err)
            return self._stop(context, {"CANCELLED"})
        finally:
            self._report_flags(runner)
        batch = runner.batch
        settled = sum(1 for item in batch.items if item.state not in ("PENDING", "QUEUED"))
        context.window_manager.progress_update(settled)
        if context.workspace is not None:
            context.workspace.status_text_set(f"SafeMotion batch: {settled}/{len(batch.items)} prompts "
                                              "(Esc cancels)")
        _redraw(context)
        if runner.finished():
            self.report({"WARNING"} if batch_unfinished(batch) else {"INFO"}, self._summary(batch))
            return self._stop(context, {"FINISHED"})
        return {"RUNNING_MODAL"}

    def cancel(self, context):
        # Blender ends the modal (e.g. a file is loaded): stop polling; the saved state lets Resume continue.
        self._runner.stop()
        self._stop(context, None)

    def _stop(self, context, result):
        scene_guard.release(self._runner)
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        _redraw(context)
        return result


class SAFEMOTION_OT_batch_generate(_BatchRun, bpy.types.Operator):
    """Generate every prompt of the chosen text block or file, one action on its own NLA track per prompt"""

    bl_idname = "safemotion.batch_generate"
    bl_label = "Generate Batch"

    def prepare(self, context) -> None:
        prompts, origin = read_batch_source(context.scene.safemotion_batch)
        start_batch(context.scene, prompts, origin)


class SAFEMOTION_OT_batch_resume(_BatchRun, bpy.types.Operator):
    """Continue the scene's batch: skip finished prompts, poll known jobs, resubmit prompts the server lost"""

    bl_idname = "safemotion.batch_resume"
    bl_label = "Resume Batch"

    @classmethod
    def poll(cls, context):
        if not super().poll(context):
            return False
        if not batch_unfinished(context.scene.safemotion_batch):
            cls.poll_message_set("No unfinished batch in this scene")
            return False
        return True

    def prepare(self, context) -> None:
        reopen_batch(context.scene.safemotion_batch)


class SAFEMOTION_OT_batch_cancel(bpy.types.Operator):
    """Cancel the scene's batch: server jobs are cancelled, prompts already applied stay"""

    bl_idname = "safemotion.batch_cancel"
    bl_label = "Cancel Batch"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if not any(item.state in ("PENDING", "QUEUED") for item in context.scene.safemotion_batch.items):
            cls.poll_message_set("No batch prompt is waiting")
            return False
        return True

    def execute(self, context):
        batch = context.scene.safemotion_batch
        runner = running_batch()
        if runner is not None and runner.scene == context.scene:
            cancelled = runner.cancel()
        else:  # a batch saved in the file: its jobs are cancelled from a request thread of their own
            try:
                connect = connector(context, threading.Event())
            except BackendError as err:
                _, cancelled = cancel_batch(batch)
                self.report({"WARNING"}, f"could not cancel the server job ({err}); {cancelled} prompts marked "
                                         "cancelled here")
                return {"FINISHED"}
            jobs, cancelled = cancel_batch(batch)
            requests = RequestThread("SafeMotion batch cancel")
            requests.call(cancel_jobs, connect, jobs)
            requests.close()
        self.report({"INFO"}, f"Cancelled {cancelled} prompts; {batch_counts(batch)['DONE']} applied prompts kept")
        return {"FINISHED"}


class SAFEMOTION_UL_batch_items(bpy.types.UIList):
    """The batch's prompts with their state."""

    bl_idname = "SAFEMOTION_UL_batch_items"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.label(text=item.name, icon=STATE_ICONS[item.state])
        row.label(text=item.message or item.prompt)


def draw_batch(layout, context) -> None:
    """The batch section: source, start/resume/cancel buttons, progress and the prompt list."""
    batch = context.scene.safemotion_batch
    column = layout.column()
    column.row().prop(batch, "source", expand=True)
    column.prop(batch, "text" if batch.source == "TEXT" else "filepath", text="")
    row = column.row(align=True)
    row.operator(SAFEMOTION_OT_batch_generate.bl_idname, icon="SEQ_STRIP_DUPLICATE")
    row.operator(SAFEMOTION_OT_batch_resume.bl_idname, text="Resume", icon="PLAY")
    row.operator(SAFEMOTION_OT_batch_cancel.bl_idname, text="", icon="CANCEL")
    if not batch.items:
        return
    counts = batch_counts(batch)
    settled = len(batch.items) - counts["PENDING"] - counts["QUEUED"]
    text = f"{counts['DONE']}/{len(batch.items)} applied"
    if hasattr(column, "progress"):
        column.progress(factor=settled / len(batch.items), type="BAR", text=text)
    else:
        column.label(text=text)
    column.template_list(SAFEMOTION_UL_batch_items.bl_idname, "", batch, "items", batch, "active_item", rows=4)
    rig = batch.target or batch.smpl_armature
    item = batch.items[batch.active_item] if 0 <= batch.active_item < len(batch.items) else None
    if rig is not None and item is not None and item.action is not None:
        audit = column.operator("safemotion.audit_action", text=f"Audit '{item.name}'", icon="VIEWZOOM")
        audit.object_name, audit.action_name, audit.preset = rig.name, item.action.name, batch.bone_preset


CLASSES = (SafeMotionBatchItem, SafeMotionBatch, SAFEMOTION_OT_batch_generate, SAFEMOTION_OT_batch_resume,
           SAFEMOTION_OT_batch_cancel, SAFEMOTION_UL_batch_items)


def register() -> None:
    """Register the batch classes, `scene.safemotion_batch` and the file-load handler."""
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.safemotion_batch = PointerProperty(type=SafeMotionBatch)
    bpy.app.handlers.load_pre.append(forget_on_load)


def unregister() -> None:
    """Remove everything `register` added."""
    if forget_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(forget_on_load)
    del bpy.types.Scene.safemotion_batch
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
