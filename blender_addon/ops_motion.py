"""Operators on an existing take: retarget an SMPL action onto another armature, audit any armature's action, export.

An SMPL take is an action on an armature whose bones carry SMPL's joint names (the add-on's own SMPL armature, or an
imported one): `read_smpl_take` turns it back into SMPL arrays in the backend's axes (local axis-angle rotations,
pelvis translation, rest joints; Y-up), sampled at every scene frame of the action. From there the retarget operator
reuses `armature.retarget_onto`. The audit operator works on any armature's active action: an SMPL armature gives its
forward-kinematics joints, any other rig is mapped back to the 22 SMPL joints through its bone mapping (stored, preset
or auto-detected) and the world heads of the mapped bones are read from the evaluated pose (constraints, drivers and
IK included) at every scene frame; the joints [T, 22, 3] go to POST /v1/audit, the hit spans become timeline markers
named after the action (each take keeps its own) and the audit is recorded in the safety list. Export goes through
Blender's own BVH, FBX and glTF exporters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty
from mathutils import Euler, Quaternion

from . import armature, keyframes, mapping_editor, retarget, safety, scene_guard, smpl_math
from .client import BackendError, encode_array
from .preferences import client_from_preferences
from .properties import preset_items
from .smpl_math import JOINT_NAMES

AUDIT_JOINTS = 22  # the audit endpoint takes HumanML3D's first 22 SMPL joints
MAX_AUDIT_FRAMES = 4000  # the server's limit on audited frames
AUDIT_MARKER_PREFIX = "SafeMotion audit"
AUDIT_PROPERTY = "safemotion_audit"  # the last audit response, as JSON, on the audited action
EXPORT_FORMATS = {"BVH": ".bvh", "FBX": ".fbx", "GLB": ".glb"}


# --- reading an SMPL take back ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmplTake:
    """An SMPL motion read from an armature's action, in the backend's axes (Y-up, metres)."""

    pose: np.ndarray  # [T, 24, 3] local axis-angle rotations, joint 0 = global orientation
    transl: np.ndarray  # [T, 3] pelvis translation from its rest position
    rest_joints: np.ndarray  # [24, 3] rest joint positions
    fps: float  # the scene's frame rate: one sample per scene frame
    frame_start: int  # scene frame of the first sample


def is_smpl_armature(obj: bpy.types.Object | None) -> bool:
    """Whether `obj` is an armature with a bone for every SMPL joint name."""
    return obj is not None and obj.type == "ARMATURE" and all(name in obj.data.bones for name in JOINT_NAMES)


def read_smpl_take(obj: bpy.types.Object, action: bpy.types.Action) -> SmplTake:
    """The SMPL motion that `action` gives the SMPL-named armature `obj`, sampled at every scene frame.

    Works for any rest orientation of the bones (inherit rotation on, no constraints): each bone's keyed basis
    rotation B becomes the SMPL local rotation R_rest B R_rest⁻¹ expressed in Y-up axes. Channels without keys keep
    the pose bone's current value. Positions are in armature space (the object's own transform is left out).
    """
    if not is_smpl_armature(obj):
        missing = [n for n in JOINT_NAMES if obj.type != "ARMATURE" or n not in obj.data.bones]
        raise ValueError(f"{obj.name!r} is not an SMPL armature: it lacks the bones {', '.join(missing[:6])}; "
                         "select the armature of a SafeMotion take")
    first, last = action.frame_range
    frames = np.arange(math.floor(first), math.ceil(last) + 1, dtype=np.float64)
    if len(frames) < 2:
        raise ValueError(f"action {action.name!r} spans a single frame; a motion needs at least two")
    to_yup = smpl_math.Y_UP_TO_Z_UP.T
    local = np.empty((len(frames), len(JOINT_NAMES), 3, 3))
    for j, name in enumerate(JOINT_NAMES):
        rest = np.array(obj.data.bones[name].matrix_local)[:3, :3]
        basis = _basis_rotations(obj, action, obj.pose.bones[name], frames)
        local[:, j] = to_yup @ rest @ basis @ rest.T @ to_yup.T
    rest0 = np.array(obj.data.bones[JOINT_NAMES[0]].matrix_local)[:3, :3]
    location = _sample(obj, action, obj.pose.bones[JOINT_NAMES[0]], "location", 3, frames)
    heads = np.array([tuple(obj.data.bones[name].head_local) for name in JOINT_NAMES], dtype=np.float64)
    render = bpy.context.scene.render
    return SmplTake(
        pose=smpl_math.quat_to_axis_angle(smpl_math.matrix_to_quat(local)),
        transl=location @ (to_yup @ rest0).T,
        rest_joints=heads @ to_yup.T,
        fps=render.fps / render.fps_base,
        frame_start=int(frames[0]),
    )


def take_joints(take: SmplTake) -> np.ndarray:
    """Joint positions [T, 24, 3] of a take (Y-up metres)."""
    return smpl_math.forward_kinematics(take.pose, take.transl, take.rest_joints)[0]


def _sample(obj, action, pose_bone, prop: str, size: int, frames: np.ndarray) -> np.ndarray:
    """Values [T, size] of a pose-bone property over `frames`: its F-curves, else its current value."""
    path = f'pose.bones["{bpy.utils.escape_identifier(pose_bone.name)}"].{prop}'
    current = tuple(getattr(pose_bone, prop))
    values = np.empty((len(frames), size))
    for i in range(size):
        fcurve = keyframes.find_fcurve(action, obj, path, i)
        values[:, i] = current[i] if fcurve is None else [fcurve.evaluate(f) for f in frames]
    return values


def _basis_rotations(obj, action, pose_bone, frames: np.ndarray) -> np.ndarray:
    """The bone's basis rotation matrices [T, 3, 3] over `frames`, in its rotation mode."""
    mode = pose_bone.rotation_mode
    if mode == "QUATERNION":
        return smpl_math.quat_to_matrix(_sample(obj, action, pose_bone, "rotation_quaternion", 4, frames))
    if mode == "AXIS_ANGLE":
        angle_axis = _sample(obj, action, pose_bone, "rotation_axis_angle", 4, frames)
        return np.array([np.array(Quaternion(v[1:], v[0]).to_matrix()) for v in angle_axis])
    eulers = _sample(obj, action, pose_bone, "rotation_euler", 3, frames)
    return np.array([np.array(Euler(v, mode).to_matrix()) for v in eulers])


# --- choosing armatures -------------------------------------------------------------------------------------------


def active_smpl_take(context) -> tuple[bpy.types.Object, bpy.types.Action]:
    """The active object as an SMPL armature with its active action; ValueError saying what to select otherwise."""
    obj = context.active_object
    if obj is None or obj.type != "ARMATURE":
        raise ValueError("no armature is active: click the SMPL armature of a SafeMotion take first")
    if not is_smpl_armature(obj):
        raise ValueError(f"{obj.name!r} is not an SMPL armature (it lacks SMPL joint names such as 'pelvis' and "
                         "'left_hip'): make the armature of a SafeMotion take active")
    action = obj.animation_data.action if obj.animation_data else None
    if action is None:
        raise ValueError(f"{obj.name!r} has no active action: choose a take (or enter tweak mode on its NLA strip)")
    return obj, action


def export_armature(context) -> bpy.types.Object:
    """The armature to export: the active object, else the only selected armature; ValueError otherwise."""
    obj = context.active_object
    if obj is not None and obj.type == "ARMATURE" and obj.select_get():
        return obj
    selected = [o for o in context.selected_objects if o.type == "ARMATURE"]
    if len(selected) == 1:
        return selected[0]
    if not selected:
        raise ValueError("no armature is selected: select the armature whose motion you want to export")
    raise ValueError(f"{len(selected)} armatures are selected ({', '.join(o.name for o in selected)}): "
                     "make the one to export active")


def _retarget_target(context, source: bpy.types.Object) -> bpy.types.Object:
    """The armature to retarget onto: another selected armature, else the panel's target armature."""
    others = [o for o in context.selected_objects if o.type == "ARMATURE" and o != source]
    if len(others) == 1:
        return others[0]
    if len(others) > 1:
        raise ValueError(f"{len(others)} other armatures are selected ({', '.join(o.name for o in others)}): "
                         "select only the target and the SMPL armature")
    target = context.scene.safemotion.target_armature
    if target is not None and target.type == "ARMATURE" and target != source:
        return target
    raise ValueError("no target armature: select it together with the SMPL armature (SMPL active), "
                     "or set the target in the SafeMotion panel")


# --- operators ------------------------------------------------------------------------------------------------------


class _SmplTakeOperator:
    """An operator on the active SMPL armature's take (one undo step)."""

    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if not is_smpl_armature(context.active_object):
            cls.poll_message_set("Make an SMPL armature with a take active")
            return False
        return scene_guard.poll_free(cls, context)


class SAFEMOTION_OT_retarget_action(_SmplTakeOperator, bpy.types.Operator):
    """Retarget the active SMPL armature's action onto the other selected armature (or the panel's target)"""

    bl_idname = "safemotion.retarget_action"
    bl_label = "Retarget Take"

    preset: EnumProperty(name="Bone names", items=preset_items())
    in_place: BoolProperty(name="In Place", description="Remove horizontal travel, keep the sway", default=False)
    scale_root_motion: BoolProperty(name="Scale Root Motion", default=True,
                                    description="Scale the hips' travel by the ratio of hip heights")

    def execute(self, context):
        try:
            source, action = active_smpl_take(context)
            target = _retarget_target(context, source)
            fit = mapping_editor.rig_fit(target, self.preset)
            take = read_smpl_take(source, action)
            options = retarget.RetargetOptions(scale_root_motion=self.scale_root_motion, in_place=self.in_place)
            with scene_guard.keep_file_on_failure():
                result_action, _ = armature.retarget_onto(
                    target, take.pose, take.transl, take.rest_joints, fit=fit, options=options, fps=take.fps,
                    action_name=f"{action.name} ({target.name})", frame_start=take.frame_start)
                result_action.use_fake_user = True  # a replaced retarget must survive saving
        except ValueError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        switched = armature.limb_switches(target)
        note = f"; {len(switched)} IK/FK switches keyed to FK" if switched else ""
        self.report({"INFO"}, f"Retargeted {action.name!r} onto {target.name!r} as {result_action.name!r}{note}")
        return {"FINISHED"}


def audit_target(context, object_name: str = "", action_name: str = "") -> tuple[bpy.types.Object, bpy.types.Action]:
    """The armature and action to audit: the named ones (e.g. a batch take on its NLA track), else the active armature
    and its active action; ValueError saying what to select otherwise."""
    obj = bpy.data.objects.get(object_name) if object_name else context.active_object
    if obj is None or obj.type != "ARMATURE":
        raise ValueError(f"{object_name!r} is not an armature" if object_name else
                         "no armature is active: click the armature whose motion you want to audit")
    if action_name:
        action = bpy.data.actions.get(action_name)
        if action is None:
            raise ValueError(f"there is no action {action_name!r} to audit")
        return obj, action
    action = obj.animation_data.action if obj.animation_data else None
    if action is None:
        raise ValueError(f"{obj.name!r} has no active action: choose the take to audit (or enter tweak mode on its "
                         "NLA strip)")
    return obj, action


def action_frames(action: bpy.types.Action) -> np.ndarray:
    """Every whole scene frame of an action's range; ValueError when it is too short or too long to audit."""
    first, last = action.frame_range
    frames = np.arange(math.floor(first), math.ceil(last) + 1)
    if not 2 <= len(frames) <= MAX_AUDIT_FRAMES:
        raise ValueError(f"action {action.name!r} spans {len(frames)} frames; an audit takes 2-{MAX_AUDIT_FRAMES}")
    return frames


def audit_mapping(obj: bpy.types.Object, preset: str) -> dict[str, str]:
    """The rig's mapping for an audit, which needs all 22 joints; ValueError naming the unmapped ones."""
    mapping = mapping_editor.rig_fit(obj, preset).mapping
    missing = [name for name in JOINT_NAMES[:AUDIT_JOINTS] if name not in mapping]
    if missing:
        raise ValueError(f"an audit needs all 22 SMPL joints, but {obj.name!r} has no bone mapped to "
                         f"{', '.join(missing)}: map them in SafeMotion ▸ Bone Mapping")
    return mapping


def rig_joints(context, obj: bpy.types.Object, mapping: dict[str, str], frames: np.ndarray) -> np.ndarray:
    """SMPL-22 joints [T, 22, 3] (Y-up, metres) of a mapped rig: the world heads of the mapped bones in the evaluated
    pose at each scene frame (the playhead is put back afterwards)."""
    scene = context.scene
    index = [obj.pose.bones.find(mapping[name]) for name in JOINT_NAMES[:AUDIT_JOINTS]]
    heads = np.empty(len(obj.pose.bones) * 3, dtype=np.float32)
    joints = np.empty((len(frames), AUDIT_JOINTS, 3))
    current = scene.frame_current
    try:
        for t, frame in enumerate(frames):
            scene.frame_set(int(frame))
            obj.pose.bones.foreach_get("head", heads)
            world = np.array(obj.matrix_world, dtype=np.float64)
            joints[t] = heads.reshape(-1, 3)[index] @ world[:3, :3].T + world[:3, 3]
    finally:
        scene.frame_set(current)
    return joints @ smpl_math.Y_UP_TO_Z_UP  # Z-up to Y-up: the inverse (transpose) of Y_UP_TO_Z_UP


def _take_prompt(scene: bpy.types.Scene, action: bpy.types.Action) -> str:
    """The prompt of the take or batch prompt whose action this is ("" for other actions)."""
    for take in scene.safemotion.takes:
        if action.name in (take.action_name, take.target_action_name):
            return take.prompt
    return next((item.prompt for item in scene.safemotion_batch.items if item.action == action), "")


class SAFEMOTION_OT_audit_action(bpy.types.Operator):
    """Ask the server where the active armature's action uses the motion codes the model removed; mark the hits and
    record the audit in the safety list"""

    bl_idname = "safemotion.audit_action"
    bl_label = "Audit Take"
    bl_options = {"REGISTER", "UNDO"}

    preset: EnumProperty(name="Bone names", items=preset_items(),
                         description="How a rig that is not an SMPL armature is mapped back to the SMPL joints")
    object_name: StringProperty(name="Armature", description="Armature to audit (empty: the active object)")
    action_name: StringProperty(name="Action", description="Its action to audit (empty: its active action)")

    @classmethod
    def poll(cls, context):
        return scene_guard.poll_free(cls, context)

    def execute(self, context):
        scene = context.scene
        try:
            obj, action = audit_target(context, self.object_name, self.action_name)
            joints, frame_start, fps = self._joints(context, obj, action)
            client = client_from_preferences(context)
            report = client.audit({"joints": encode_array(joints), "fps": fps})
            with scene_guard.keep_file_on_failure():
                action[AUDIT_PROPERTY] = json.dumps(report)
                markers = mark_audit_spans(scene, report, frame_start, fps, action.name)
                spans = ", ".join(f"{a.frame}-{b.frame}" for a, b in zip(markers[0::2], markers[1::2]))
                text = safety.record_audit(scene, action.name, report, action, spans, client.base_url,
                                           _take_prompt(scene, action))
        except (ValueError, BackendError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"WARNING" if report["flagged"] else "INFO"},
                    f"{text} {len(report['spans'])} hit span(s) marked on the timeline")
        return {"FINISHED"}

    def _joints(self, context, obj: bpy.types.Object, action: bpy.types.Action) -> tuple[np.ndarray, int, float]:
        """SMPL-22 joints [T, 22, 3] of `action` on `obj`, its first scene frame and the rate; the action is made
        active while it is read (a batch take on the NLA track) and the previous one put back."""
        previous = obj.animation_data.action if obj.animation_data else None
        if action != previous:
            keyframes.assign_action(obj, action)
        try:
            if is_smpl_armature(obj):
                take = read_smpl_take(obj, action)
                return take_joints(take)[:, :AUDIT_JOINTS], take.frame_start, take.fps
            mapping = audit_mapping(obj, self.preset)
            frames = action_frames(action)
            render = context.scene.render
            return rig_joints(context, obj, mapping, frames), int(frames[0]), render.fps / render.fps_base
        finally:
            if action != previous:
                obj.animation_data.action = previous


def mark_audit_spans(scene: bpy.types.Scene, report: dict, frame_start: int, fps: float, label: str = "") -> list:
    """Timeline markers on the first and last scene frame of each hit span; an earlier audit's markers of the same
    `label` (the action) are replaced, other takes' audit markers stay."""
    prefix = f"{AUDIT_MARKER_PREFIX} {label[:24]}".rstrip() + " "
    for marker in [m for m in scene.timeline_markers if m.name.startswith(prefix + "hit ")
                   or m.name.startswith(prefix + "end ")]:
        scene.timeline_markers.remove(marker)
    markers = []
    for k, span in enumerate(report.get("spans", []), start=1):
        first = frame_start + round(span["start_s"] * fps)
        last = max(first, frame_start + round(span["end_s"] * fps) - 1)
        times = f"{span['start_s']:.1f}-{span['end_s']:.1f} s"
        markers.append(scene.timeline_markers.new(f"{prefix}hit {k} {times}"[:63], frame=first))
        markers.append(scene.timeline_markers.new(f"{prefix}end {k}"[:63], frame=last))
    return markers


class SAFEMOTION_OT_export_motion(bpy.types.Operator):
    """Export the selected armature and its active action as BVH, FBX or glTF (GLB) with Blender's exporters"""

    bl_idname = "safemotion.export_motion"
    bl_label = "Export Take"

    format: EnumProperty(name="Format", items=[
        ("BVH", "BVH", "Motion capture hierarchy (armature and motion only)"),
        ("FBX", "FBX", "Autodesk FBX with the armature, its meshes and the baked take"),
        ("GLB", "glTF (.glb)", "glTF binary with the armature, its meshes and the take"),
    ])
    filepath: StringProperty(name="File", subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.bvh;*.fbx;*.glb", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        if not any(o.type == "ARMATURE" for o in context.selected_objects):
            cls.poll_message_set("Select the armature to export")
            return False
        return scene_guard.poll_free(cls, context)  # the export sets the scene's frame range while it runs

    def invoke(self, context, event):
        try:
            obj = export_armature(context)
        except ValueError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        if not self.filepath:
            action = obj.animation_data.action if obj.animation_data else None
            stem = bpy.path.clean_name(action.name if action else obj.name)
            folder = Path(bpy.path.abspath("//")) if bpy.data.filepath else Path.home()
            self.filepath = str(folder / (stem + EXPORT_FORMATS[self.format]))
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            obj = export_armature(context)
            action = obj.animation_data.action if obj.animation_data else None
            if action is None:
                raise ValueError(f"{obj.name!r} has no active action: choose the take to export")
            if not self.filepath:
                raise ValueError("no file name given: choose where to write the export")
            path = Path(bpy.path.abspath(self.filepath))
            if path.suffix.lower() != EXPORT_FORMATS[self.format]:
                path = path.with_name(path.name + EXPORT_FORMATS[self.format])
            if not path.parent.is_dir():
                raise ValueError(f"folder {path.parent} does not exist: choose an existing folder")
            export_take(context, obj, action, self.format, path)
        except (ValueError, RuntimeError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {action.name!r} to {path}")
        return {"FINISHED"}


def export_take(context, obj: bpy.types.Object, action: bpy.types.Action, fmt: str, path: Path) -> None:
    """Write `obj` with `action` over the action's frame range through Blender's exporter for `fmt`."""
    first, last = (int(round(f)) for f in action.frame_range)
    scene = context.scene
    saved_range = scene.frame_start, scene.frame_end
    view_layer = context.view_layer
    saved_active = view_layer.objects.active
    saved_selection = [o for o in view_layer.objects if o.select_get()]
    exported = [obj]
    if fmt != "BVH":  # FBX and glTF carry the skinned meshes too
        exported += [child for child in obj.children if child.type == "MESH"]
    try:
        for other in saved_selection:
            other.select_set(False)
        for item in exported:
            item.select_set(True)
        view_layer.objects.active = obj
        scene.frame_start, scene.frame_end = first, last
        with context.temp_override(active_object=obj, object=obj, selected_objects=exported):
            if fmt == "BVH":
                bpy.ops.export_anim.bvh(filepath=str(path), frame_start=first, frame_end=last,
                                        rotate_mode="NATIVE")
            elif fmt == "FBX":
                bpy.ops.export_scene.fbx(filepath=str(path), use_selection=True,
                                         object_types={"ARMATURE", "MESH"}, add_leaf_bones=False, bake_anim=True,
                                         bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False)
            else:
                bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", use_selection=True,
                                          export_animations=True, export_animation_mode="ACTIVE_ACTIONS")
    finally:
        scene.frame_start, scene.frame_end = saved_range
        for item in exported:
            item.select_set(False)
        for other in saved_selection:
            other.select_set(True)
        view_layer.objects.active = saved_active
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"the {fmt} exporter wrote nothing to {path}")


def draw_motion(layout, context) -> None:
    """The take tools: retarget, audit and export buttons."""
    column = layout.column(align=True)
    retarget_op = column.operator(SAFEMOTION_OT_retarget_action.bl_idname, icon="ARMATURE_DATA")
    retarget_op.preset = context.scene.safemotion.bone_preset
    column.operator(SAFEMOTION_OT_audit_action.bl_idname, icon="VIEWZOOM").preset = context.scene.safemotion.bone_preset
    row = column.row(align=True)
    for fmt, label in (("BVH", "BVH"), ("FBX", "FBX"), ("GLB", "glTF")):
        row.operator(SAFEMOTION_OT_export_motion.bl_idname, text=label, icon="EXPORT").format = fmt


CLASSES = (SAFEMOTION_OT_retarget_action, SAFEMOTION_OT_audit_action, SAFEMOTION_OT_export_motion)


def register() -> None:
    """Register the take operators."""
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    """Unregister the take operators."""
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
