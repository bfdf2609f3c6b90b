"""Edit takes on the server (POST /v1/edit): Regenerate Range, Extend Take and In-between, each writing a NEW take.

The source take is read back from its SMPL armature's action (`ops_motion.read_smpl_take`, one sample per scene frame)
and sent as joints [T, 22, 3] with the base-layer code ids the server decoded the take from (the take's
`base_tokens`; the server's review counts a kept token whose carried or re-encoded id is a removed code, so an edit of
a flagged take stays flagged); the scene's prompt, seed, variations and policy apply as for Generate. The edit runs as
an `ops_generate.EditJob` through Generate's modal operator logic (`JobOperator`): the request goes out on a background
thread and the timer ticks only write the answer, so the interface never waits for the server (Esc, Cancel, a file
load or disabling the add-on drop the answer). The answer is written by `ops_generate.apply_motions`, so the new takes get their safety record and flag markers exactly like
generated ones (and a failure while writing is taken back by `scene_guard.keep_file_on_failure`), a seam the server
could not bring under its limit is reported and kept on the new take (`seam_warnings`), and the source take's actions
are never touched. A new take reuses an SMPL armature only when the server's re-fitted body is the
armature's own skeleton (`ops_generate.EDIT_REST_MATCH_M`), so outside the edited frames it is the source take. Regenerate Range uses the timeline's preview range
(in scene frames) or, without one, the span of the selected keyframes of the take's action. In-between uses the two
takes whose NLA strips are selected (in time order), else the active take and the next one in the list.
"""

from __future__ import annotations

import random

import bpy
import numpy as np

from . import keyframes, ops_generate, ops_motion, scene_guard
from .client import encode_array
from .properties import MAX_SEED


def take_source(take: bpy.types.PropertyGroup) -> tuple[dict, float]:
    """The SourcePayload of a take (joints read back from its SMPL action, and the base ids the server decoded it
    from, which the edit's review counts) and its frame rate."""
    action = bpy.data.actions.get(take.action_name)
    if take.armature is None or action is None:
        raise ValueError(f"take '{take.name}': its SMPL armature or action {take.action_name!r} no longer exists")
    motion = ops_motion.read_smpl_take(take.armature, action)
    joints = ops_motion.take_joints(motion)[:, :ops_motion.AUDIT_JOINTS]
    source = {"joints": encode_array(joints), "fps": motion.fps}
    if take.base_tokens:
        source["base_tokens"] = encode_array(np.array([int(i) for i in take.base_tokens.split(",")]), "int64")
    return source, motion.fps


def scene_range_to_take(scene: bpy.types.Scene, take: bpy.types.PropertyGroup, first: float, last: float,
                        fps: float) -> list[int]:
    """Scene frames [first, last] (inclusive) as the take's frame span [start, end) at its frame rate."""
    scale = fps / (scene.render.fps / scene.render.fps_base)
    start = round((first - take.frame_start) * scale)
    end = round((last - take.frame_start) * scale) + 1
    return [start, end]


def regenerate_range(context: bpy.types.Context, take: bpy.types.PropertyGroup) -> tuple[float, float]:
    """The scene frames to regenerate: the preview range, else the selected keyframes' span of the take's action."""
    scene = context.scene
    if scene.use_preview_range:
        return float(scene.frame_preview_start), float(scene.frame_preview_end)
    action = bpy.data.actions.get(take.action_name)
    selected = [key.co.x for fcurve in _fcurves(action, take.armature) for key in fcurve.keyframe_points
                if key.select_control_point] if action is not None else []
    if len(set(selected)) < 2:
        raise ValueError("Set a preview range on the timeline (Ctrl+Alt+P) or select the keyframes to regenerate")
    return min(selected), max(selected)


def _fcurves(action: bpy.types.Action, obj: bpy.types.Object):
    """`obj`'s F-curves in the action (layered actions of Blender 4.4+ keep them in the object's channelbag)."""
    if hasattr(action, "fcurves") and len(action.fcurves):
        return list(action.fcurves)
    bag = keyframes._channelbag(action, obj, create=False) if hasattr(action, "layers") else None
    return list(bag.fcurves) if bag is not None else []


def nla_pair(context: bpy.types.Context) -> tuple[int, int] | None:
    """Take indices of the two selected NLA strips that hold take actions, in time order; None unless exactly two."""
    takes = context.scene.safemotion.takes
    by_action = {take.action_name: i for i, take in enumerate(takes)}
    strips = []
    for obj in context.scene.objects:
        tracks = obj.animation_data.nla_tracks if obj.animation_data else ()
        for track in tracks:
            strips += [(strip.frame_start, by_action[strip.action.name]) for strip in track.strips
                       if strip.select and strip.action is not None and strip.action.name in by_action]
    if len(strips) != 2:
        return None
    (_, first), (_, second) = sorted(strips)
    return first, second


def edit_payload(context: bpy.types.Context, prompt_source: dict, **operation) -> tuple[dict, int]:
    """The POST /v1/edit body for the scene's prompt, seed, variations and policy, and the seed it starts from."""
    settings = context.scene.safemotion
    prompt = settings.prompt.strip()
    if not prompt:
        raise ValueError("Type a prompt first: it describes the new part of the take, e.g. 'a person jumps'")
    seed = random.randrange(0, MAX_SEED + 1) if settings.random_seed else settings.seed
    return {"source": prompt_source, "prompt": prompt, "seed": seed, "variations": settings.variations,
            "policy": settings.policy.lower(), **operation}, seed


class _EditOperator(ops_generate.JobOperator):
    """An edit of the scene's take number `index` (the active take when not set) into new takes."""

    index: bpy.props.IntProperty(name="Take", min=-1, default=-1, description="-1: the active take")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not scene_guard.poll_free(cls, context):
            return False
        if not len(context.scene.safemotion.takes):
            cls.poll_message_set("Generate a take first")
            return False
        return True

    def take(self, context: bpy.types.Context) -> bpy.types.PropertyGroup:
        """The take to edit; ValueError when there is no such take."""
        takes = context.scene.safemotion.takes
        index = context.scene.safemotion.active_take if self.index < 0 else self.index
        if not 0 <= index < len(takes):
            raise ValueError(f"There is no take {index + 1}")
        return takes[index]

    def edit_job(self, context: bpy.types.Context, prompt_source: dict, frame_start: int,
                 **operation) -> ops_generate.EditJob:
        """The job of an edit of `prompt_source` (the scene's prompt, seed, variations and policy) whose new takes
        start at `frame_start`."""
        return ops_generate.EditJob(context, edit_payload(context, prompt_source, **operation), frame_start)


class SAFEMOTION_OT_regenerate_range(_EditOperator, bpy.types.Operator):
    """Regenerate the preview range (or the selected keyframes) of the take from the prompt, as a new take"""

    bl_idname = "safemotion.regenerate_range"
    bl_label = "Regenerate Range"

    def make_job(self, context: bpy.types.Context) -> ops_generate.EditJob:
        take = self.take(context)
        first, last = regenerate_range(context, take)
        source, fps = take_source(take)
        span = scene_range_to_take(context.scene, take, first, last, fps)
        return self.edit_job(context, source, take.frame_start, frames=[span])


class SAFEMOTION_OT_extend_take(_EditOperator, bpy.types.Operator):
    """Add new motion from the prompt after the take's end (or before its start), as a new take"""

    bl_idname = "safemotion.extend_take"
    bl_label = "Extend Take"

    seconds: bpy.props.FloatProperty(name="Seconds", default=2.0, min=0.5, max=9.0)
    at: bpy.props.EnumProperty(name="Where", items=[("end", "After", "Continue after the take's last frame"),
                                                    ("start", "Before", "Lead into the take's first frame")])

    def make_job(self, context: bpy.types.Context) -> ops_generate.EditJob:
        take = self.take(context)
        source, fps = take_source(take)
        start = take.frame_start
        if self.at == "start":  # the new frames come first: the take's own frames stay where they were
            render = context.scene.render
            added = int(np.floor(self.seconds * fps + 1e-6)) // 4 * 4
            start -= round(added * (render.fps / render.fps_base) / fps)
        return self.edit_job(context, source, start, extend_seconds=round(float(self.seconds), 3), extend_at=self.at)


class SAFEMOTION_OT_inbetween(_EditOperator, bpy.types.Operator):
    """Generate a transition from the prompt between two takes (their selected NLA strips, else the active take and
    the next one) as a new take: the first take, the transition, then the second one"""

    bl_idname = "safemotion.inbetween"
    bl_label = "In-between"

    seconds: bpy.props.FloatProperty(name="Seconds", default=1.5, min=0.5, max=9.0)
    second: bpy.props.IntProperty(name="Second Take", min=-1, default=-1,
                                  description="-1: the selected NLA strips' takes, else the take after the first")

    def make_job(self, context: bpy.types.Context) -> ops_generate.EditJob:
        takes = context.scene.safemotion.takes
        pair = nla_pair(context) if self.index < 0 and self.second < 0 else None
        if pair is None:
            first = self.take(context)
            index = list(takes).index(first)
            second_index = index + 1 if self.second < 0 else self.second
            if not 0 <= second_index < len(takes) or second_index == index:
                raise ValueError("Select the NLA strips of two takes, or pick a second take for the in-between")
            pair = (index, second_index)
        first, second = takes[pair[0]], takes[pair[1]]
        source, _ = take_source(first)
        other, _ = take_source(second)
        return self.edit_job(context, source, first.frame_start, between=other, seconds=round(float(self.seconds), 3))


def draw_edit(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The edit buttons (they use the prompt, seed and variations above)."""
    column = layout.column(align=True)
    column.operator(SAFEMOTION_OT_regenerate_range.bl_idname, icon="FILE_REFRESH")
    column.operator(SAFEMOTION_OT_extend_take.bl_idname, icon="FORWARD")
    column.operator(SAFEMOTION_OT_inbetween.bl_idname, icon="ARROW_LEFTRIGHT")


CLASSES = (SAFEMOTION_OT_regenerate_range, SAFEMOTION_OT_extend_take, SAFEMOTION_OT_inbetween)

