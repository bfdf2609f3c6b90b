"""Operators on an existing take: retarget an SMPL action onto another armature, audit it, export it.

An SMPL take is an action on an armature whose bones carry SMPL's joint names (the add-on's own SMPL armature, or an
imported one): `read_smpl_take` turns it back into SMPL arrays in the backend's axes (local axis-angle rotations,
pelvis translation, rest joints; Y-up), sampled at every scene frame of the action. From there the retarget operator
reuses `armature.retarget_onto`, and the audit operator sends the forward-kinematics joints [T, 22, 3] to POST
/v1/audit and shows the hit spans as timeline markers. Export goes through Blender's own BVH, FBX and glTF exporters.
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

from . import armature, keyframes, retarget, smpl_math
from .client import BackendError, encode_array
from .preferences import client_from_preferences
from .properties import preset_items
from .smpl_math import JOINT_NAMES

AUDIT_JOINTS = 22  # the audit endpoint takes HumanML3D's first 22 SMPL joints
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
        pose=_matrix_to_axis_angle(local),
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


def _matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """Axis-angle vectors [..., 3] of rotation matrices [..., 3, 3] (angles in [0, pi])."""
    q = smpl_math.matrix_to_quat(m)  # w >= 0
    sin_half = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., :1])
    # angle / sin(angle/2) tends to 2 for small angles.
    ratio = np.where(sin_half > 1e-9, angle / np.maximum(sin_half, 1e-12), 2.0)
    return q[..., 1:] * ratio


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
        return True


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
            mapping = armature.target_mapping(target, self.preset)
            take = read_smpl_take(source, action)
            options = retarget.RetargetOptions(scale_root_motion=self.scale_root_motion, in_place=self.in_place)
            result_action, _ = armature.retarget_onto(
                target, take.pose, take.transl, take.rest_joints, mapping=mapping, options=options, fps=take.fps,
                action_name=f"{action.name} ({target.name})", frame_start=take.frame_start)
        except ValueError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        switched = armature.limb_switches(target)
        note = f"; {len(switched)} IK/FK switches keyed to FK" if switched else ""
        self.report({"INFO"}, f"Retargeted {action.name!r} onto {target.name!r} as {result_action.name!r}{note}")
        return {"FINISHED"}


class SAFEMOTION_OT_audit_action(_SmplTakeOperator, bpy.types.Operator):
    """Ask the server where the active SMPL take uses the motion codes the model removed; mark the hits"""

    bl_idname = "safemotion.audit_action"
    bl_label = "Audit Take"

    def execute(self, context):
        try:
            obj, action = active_smpl_take(context)
            take = read_smpl_take(obj, action)
            joints = take_joints(take)[:, :AUDIT_JOINTS]
            report = client_from_preferences(context).audit({"joints": encode_array(joints), "fps": take.fps})
        except (ValueError, BackendError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        action[AUDIT_PROPERTY] = json.dumps(report)
        mark_audit_spans(context.scene, report, take.frame_start, take.fps)
        verdict = "FLAGGED" if report["flagged"] else "passed"
        self.report({"WARNING" if report["flagged"] else "INFO"},
                    f"Audit of {action.name!r}: {verdict}, {report['hit_ratio']:.0%} of {report['num_tokens']} "
                    f"tokens use removed codes (threshold {report['threshold']:.0%}); {len(report['spans'])} hit span(s) "
                    "marked on the timeline")
        return {"FINISHED"}


def mark_audit_spans(scene: bpy.types.Scene, report: dict, frame_start: int, fps: float) -> list:
    """Timeline markers on the first and last scene frame of each hit span (earlier audit markers are replaced)."""
    for marker in [m for m in scene.timeline_markers if m.name.startswith(AUDIT_MARKER_PREFIX)]:
        scene.timeline_markers.remove(marker)
    markers = []
    for k, span in enumerate(report.get("spans", []), start=1):
        first = frame_start + round(span["start_s"] * fps)
        last = max(first, frame_start + round(span["end_s"] * fps) - 1)
        times = f"{span['start_s']:.1f}-{span['end_s']:.1f} s"
        markers.append(scene.timeline_markers.new(f"{AUDIT_MARKER_PREFIX} hit {k} {times}", frame=first))
        markers.append(scene.timeline_markers.new(f"{AUDIT_MARKER_PREFIX} end {k}", frame=last))
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
        return True

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
    column.operator(SAFEMOTION_OT_audit_action.bl_idname, icon="VIEWZOOM")
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
