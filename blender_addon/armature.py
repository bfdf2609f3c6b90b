"""Armatures in Blender: the bone-only SMPL armature, SMPL motion onto it, retargeting onto other rigs, a demo rig.

Thin glue around the numpy cores (smpl_math, retarget) and the key writer (keyframes). The SMPL armature puts each bone
head on its joint with the tail straight up (+Z) and roll 0, so every bone's local axes are the backend's Y-up axes:
SMPL axis-angle goes straight into `rotation_quaternion` and the translation straight into the pelvis `location`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Euler, Matrix, Quaternion

from . import keyframes, retarget, smpl_math

SMPL_BONE_LENGTH = 0.1  # metres; SMPL bones point up from their joint, so the length is only for display


@dataclass(frozen=True)
class BoneSpec:
    """One edit bone: name, head and tail in armature space, parent name, roll (radians)."""

    name: str
    head: tuple[float, float, float]
    tail: tuple[float, float, float]
    parent: str | None = None
    roll: float = 0.0


def build_armature(name: str, bones: Sequence[BoneSpec]) -> bpy.types.Object:
    """A new armature object in the scene's master collection with these bones (parents listed first).

    Call it in object mode; the active object and the selection are restored afterwards.
    """
    known: set[str] = set()
    for bone in bones:
        if bone.parent is not None and bone.parent not in known:
            raise ValueError(
                f"build_armature {name!r}: bone {bone.name!r} lists parent {bone.parent!r} before it exists"
            )
        if bone.name in known:
            raise ValueError(f"build_armature {name!r}: bone name {bone.name!r} is used twice")
        known.add(bone.name)
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    # Bones can only be created in edit mode, which needs the armature as the active object; other selected objects
    # would enter edit mode with it, so the selection is set aside meanwhile.
    view_layer = bpy.context.view_layer
    previous_active = view_layer.objects.active
    previous_selected = [o for o in view_layer.objects if o.select_get()]
    for other in previous_selected:
        other.select_set(False)
    view_layer.objects.active = obj
    try:
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            for spec in bones:
                edit = data.edit_bones.new(spec.name)
                edit.head, edit.tail, edit.roll = spec.head, spec.tail, spec.roll
                if spec.parent is not None:
                    edit.parent = data.edit_bones[spec.parent]
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    finally:
        view_layer.objects.active = previous_active
        for other in previous_selected:
            other.select_set(True)
    for pose_bone in obj.pose.bones:
        pose_bone.rotation_mode = "QUATERNION"
    return obj


def build_smpl_armature(
    name: str, names: Sequence[str], parents: Sequence[int], rest_joints_yup: np.ndarray
) -> bpy.types.Object:
    """Bone-only armature from the server's skeleton description (names, parents, rest joints [J,3] Y-up)."""
    joints = np.asarray(rest_joints_yup, dtype=np.float64)
    if joints.shape != (len(names), 3) or len(parents) != len(names):
        raise ValueError(
            f"build_smpl_armature: {len(names)} names need {len(names)} parents and rest joints [{len(names)}, 3]; "
            f"got {len(parents)} parents and {joints.shape}"
        )
    heads = smpl_math.points_to_z_up(joints)
    bones = []
    for j, bone_name in enumerate(names):
        if not -1 <= parents[j] < j:
            raise ValueError(
                f"build_smpl_armature: joint {j} ({bone_name!r}) has parent {parents[j]}; parents come first"
            )
        head = tuple(float(v) for v in heads[j])
        tail = (head[0], head[1], head[2] + SMPL_BONE_LENGTH)
        bones.append(BoneSpec(bone_name, head, tail, names[parents[j]] if parents[j] >= 0 else None))
    return build_armature(name, bones)


def align_body_to_rest(vertices: np.ndarray, weights: np.ndarray, model_rest: np.ndarray,
                       rest_joints: np.ndarray) -> np.ndarray:
    """Template vertices [V,3] moved onto another rest skeleton: each vertex shifts by its dominant joint's offset.

    The armature is built from each motion's fitted rest joints, which differ from the body model's own; shifting a
    vertex with the joint that weighs most on it keeps every limb's mesh on its bone (limbs keep the template's
    length, so a gap or overlap of the offset difference can appear at joints whose two sides move differently).
    """
    dominant = np.argmax(weights, axis=1)
    return vertices + (rest_joints - model_rest)[dominant]


def build_body_mesh(rig: bpy.types.Object, names: Sequence[str], vertices_yup: np.ndarray, faces: np.ndarray,
                    weights: np.ndarray) -> bpy.types.Object:
    """A mesh (Y-up vertices [V,3], triangles [F,3]) skinned to the SMPL armature: one vertex group per bone with
    the weights [V, J], an Armature modifier, parented to the rig. The vertices must sit on the rig's rest pose."""
    if weights.shape != (len(vertices_yup), len(names)) or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"build_body_mesh: {len(vertices_yup)} vertices need weights [{len(vertices_yup)}, "
                         f"{len(names)}] and faces [F, 3]; got {weights.shape} and {faces.shape}")
    if len(faces) and not 0 <= faces.min() <= faces.max() < len(vertices_yup):
        raise ValueError(f"build_body_mesh: face indices {faces.min()}..{faces.max()} are outside the "
                         f"{len(vertices_yup)} vertices")
    name = f"{rig.name} body"
    mesh = bpy.data.meshes.new(name)
    points = smpl_math.points_to_z_up(np.asarray(vertices_yup, dtype=np.float64))
    mesh.vertices.add(len(points))
    mesh.vertices.foreach_set("co", points.astype(np.float32).ravel())
    triangles = np.asarray(faces, dtype=np.int32)
    mesh.loops.add(triangles.size)
    mesh.loops.foreach_set("vertex_index", triangles.ravel())
    mesh.polygons.add(len(triangles))
    mesh.polygons.foreach_set("loop_start", np.arange(0, triangles.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(triangles), 3, dtype=np.int32))
    mesh.update()
    mesh.validate()
    body = bpy.data.objects.new(name, mesh)
    for collection in rig.users_collection:
        collection.objects.link(body)
    groups = [body.vertex_groups.new(name=bone) for bone in names]
    for v, j in zip(*np.nonzero(weights > 0)):
        groups[j].add([int(v)], float(weights[v, j]), "REPLACE")
    modifier = body.modifiers.new("Armature", "ARMATURE")
    modifier.object = rig
    body.parent = rig
    return body


def _frames(count: int, fps: float, frame_start: float) -> np.ndarray:
    """Scene frame of every motion frame: the motion's rate mapped onto the scene's rate."""
    render = bpy.context.scene.render
    return frame_start + np.arange(count) * (render.fps / render.fps_base) / fps


def _bone_path(bone: str, prop: str) -> str:
    """RNA path of a pose-bone property, e.g. pose.bones["Hips"].location."""
    return f'pose.bones["{bpy.utils.escape_identifier(bone)}"].{prop}'


def apply_smpl_motion(
    armature_obj: bpy.types.Object,
    pose: np.ndarray,
    transl: np.ndarray,
    fps: float = 20.0,
    action_name: str = "SMPL motion",
    frame_start: float = 1.0,
    names: Sequence[str] = smpl_math.JOINT_NAMES,
) -> bpy.types.Action:
    """Key an SMPL pose [T,24,3] (axis-angle) and translation [T,3] onto an armature from `build_smpl_armature`."""
    pose = np.asarray(pose, dtype=np.float64)
    transl = np.asarray(transl, dtype=np.float64)
    if pose.ndim != 3 or pose.shape[1:] != (len(names), 3) or transl.shape != (pose.shape[0], 3):
        raise ValueError(
            f"apply_smpl_motion: expected pose [T, {len(names)}, 3] and transl [T, 3], "
            f"got {pose.shape} and {transl.shape}"
        )
    missing = [n for n in names if n not in armature_obj.pose.bones]
    if missing:
        raise ValueError(f"apply_smpl_motion: armature {armature_obj.name!r} has no bones {missing}")
    quats = smpl_math.quat_continuous(smpl_math.axis_angle_to_quat(pose))
    channels = {}
    for j, bone in enumerate(names):
        armature_obj.pose.bones[bone].rotation_mode = "QUATERNION"
        for i in range(4):
            channels[(_bone_path(bone, "rotation_quaternion"), i)] = quats[:, j, i]
    for i in range(3):
        channels[(_bone_path(names[0], "location"), i)] = transl[:, i]
    action = bpy.data.actions.new(action_name)
    keyframes.write_keys(armature_obj, action, channels, _frames(len(pose), fps, frame_start))
    return action


def read_target_rig(armature_obj: bpy.types.Object) -> retarget.TargetRig:
    """The armature's rest skeleton (bone names, parents, rest matrices, tails) and object matrix."""
    bones = armature_obj.data.bones
    names = tuple(bone.name for bone in bones)
    index = {name: b for b, name in enumerate(names)}
    return retarget.TargetRig(
        names=names,
        parents=tuple(index[bone.parent.name] if bone.parent else -1 for bone in bones),
        rest=np.array([np.array(bone.matrix_local) for bone in bones], dtype=np.float64),
        tails=np.array([tuple(bone.tail_local) for bone in bones], dtype=np.float64),
        world=np.array(armature_obj.matrix_world, dtype=np.float64),
    )


def fit_target(target_obj: bpy.types.Object, preset: str) -> retarget.RigFit:
    """The target armature's mapping for a preset name or "AUTO", checked on the rig itself before anything is
    written (see `check_target`); ValueError when it cannot be mapped or does not fit."""
    names = [bone.name for bone in target_obj.data.bones]
    if preset == "AUTO":
        mapping = retarget.auto_mapping(names)[1]
    else:
        mapping = retarget.chosen_preset_mapping(preset, names)
    return check_target(target_obj, mapping)


def check_target(target_obj: bpy.types.Object, mapping: Mapping[str, str]) -> retarget.RigFit:
    """The rig fit of `mapping` on the armature, checked once for a whole retarget (pass it to `retarget_onto`);
    ValueError, changing nothing, for problems of the mapping, a rig that does not stand along +Z or has its hips
    below its feet (`retarget.fit_rig`), or mapped bones that constraints hold still whatever their keys say."""
    fit = retarget.fit_rig(read_target_rig(target_obj), mapping)
    frozen = _frozen_bones(target_obj, list(mapping.values()))
    if frozen:
        roles = {bone: role for role, bone in mapping.items()}
        listed = ", ".join(f"{bone!r} ({roles[bone]})" for bone in frozen[:6])
        raise ValueError(
            f"retarget onto {target_obj.name!r}: {len(frozen)} mapped bone(s) do not move when keyed because "
            f"constraints or drivers hold them ({listed}); this bone mapping does not fit the rig. Map the rig's "
            "animation controls instead (for a generated Rigify rig: the 'Rigify (FK controls)' preset)"
        )
    return fit


PROBE_DEGREES = 30.0  # test turn of each mapped bone in `_frozen_bones`
_POSE_CHANNELS = ("location", "rotation_quaternion", "rotation_euler", "rotation_axis_angle", "scale")


def _pose_values(pose_bone: bpy.types.PoseBone) -> dict[str, tuple[float, ...]]:
    """The bone's transform channels exactly as stored (setting matrix_basis back could flip a quaternion's sign)."""
    return {channel: tuple(getattr(pose_bone, channel)) for channel in _POSE_CHANNELS}


def _restore_pose(pose_bone: bpy.types.PoseBone, values: dict[str, tuple[float, ...]]) -> None:
    """Put back what `_pose_values` read."""
    for channel, value in values.items():
        setattr(pose_bone, channel, value)


def _frozen_bones(obj: bpy.types.Object, bones: Sequence[str]) -> list[str]:
    """Mapped bones whose evaluated rotation follows less than half of a test turn of their own basis."""
    pose_bones = obj.pose.bones
    view_layer = bpy.context.view_layer
    turn = Quaternion((1.0, 0.0, 0.0), np.radians(PROBE_DEGREES)).to_matrix().to_4x4()
    frozen = []
    for name in bones:
        pose_bone = pose_bones[name]
        saved = _pose_values(pose_bone)
        try:
            view_layer.update()
            before = np.array(pose_bone.matrix)
            pose_bone.matrix_basis = pose_bone.matrix_basis @ turn
            view_layer.update()
            after = np.array(pose_bone.matrix)
        finally:
            _restore_pose(pose_bone, saved)
        if retarget.pose_errors(after, before)[0] < PROBE_DEGREES / 2:
            frozen.append(name)
    view_layer.update()
    return frozen


RIGIFY_SWITCH = "IK_FK"  # Rigify's IK/FK switch, a custom property of each limb's parent control (1.0 = FK)
SOLVE_STEPS = 12  # most correction steps per frame
SOLVE_DEGREES, SOLVE_METRES = 0.01, 1e-5  # a frame is solved when every mapped bone is this close to its goal
FIT_DEGREES, FIT_METRES = 0.5, 1e-3  # a bone still farther than this after the solve: the mapping does not fit


def limb_switches(obj: bpy.types.Object) -> list[str]:
    """Pose bones that carry Rigify's IK/FK switch; retargeting drives the FK controls and keys these to FK."""
    return [pose_bone.name for pose_bone in obj.pose.bones if RIGIFY_SWITCH in pose_bone.keys()]


def solve_evaluated(obj: bpy.types.Object, result: retarget.RetargetResult,
                    switches: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rotations [T, 4] and locations [T, 3] of the mapped bones that make the rig's *evaluated* pose (constraints,
    drivers and switches included) reach `result.targets`, frame by frame.

    Each frame starts from the hierarchy-only solution (with the previous frame's correction), poses the bones,
    lets Blender evaluate the rig and corrects every bone by its remaining error (`retarget.correct_bases`) until it
    is within SOLVE_DEGREES / SOLVE_METRES. The rig's action is set aside and its pose restored afterwards, so nothing
    changes when this raises: ValueError when bones stay farther than FIT_DEGREES / FIT_METRES from their goal.
    """
    bones = list(result.ancestors) + [bone for bone in result.targets if bone not in result.ancestors]
    ancestors = np.array([bones.index(result.ancestors[b]) if result.ancestors.get(b) else -1 for b in bones])
    located = np.array([bone in result.locations for bone in bones])
    desired = np.stack([result.targets[bone] for bone in bones], axis=1)  # [T, N, 4, 4]
    frames = len(desired)
    pose_bones = obj.pose.bones
    start = np.tile(np.eye(4), (frames, len(bones), 1, 1))
    for k, bone in enumerate(bones):
        start[:, k, :3, :3] = smpl_math.quat_to_matrix(result.rotations[bone])
        start[:, k, :3, 3] = result.locations[bone] if located[k] else tuple(pose_bones[bone].location)
    solved = np.empty_like(start)
    worst = np.zeros((2, len(bones)))
    saved_pose = {bone: _pose_values(pose_bones[bone]) for bone in bones}
    saved_switches = {name: pose_bones[name][RIGIFY_SWITCH] for name in switches}
    anim = obj.animation_data
    saved_action = anim.action if anim is not None else None
    view_layer = bpy.context.view_layer
    try:
        if saved_action is not None:
            anim.action = None  # its keys would win over the pose set here
        for name in switches:
            pose_bones[name][RIGIFY_SWITCH] = 1.0
        view_layer.update()  # let animation that is still evaluated (NLA strips) apply before the poses are set
        correction = np.tile(np.eye(4), (len(bones), 1, 1))
        for t in range(frames):
            bases = correction @ start[t]
            for step in range(SOLVE_STEPS):
                for k, bone in enumerate(bones):
                    pose_bones[bone].matrix_basis = Matrix(bases[k])
                view_layer.update()
                evaluated = np.array([np.array(pose_bones[bone].matrix) for bone in bones])
                angles, distances = retarget.pose_errors(evaluated, desired[t])
                distances = np.where(located, distances, 0.0)
                done = (angles < SOLVE_DEGREES) & (distances < SOLVE_METRES)
                if done.all():
                    break
                if step:
                    # Still off although its ancestor arrived: it does not turn with that ancestor (Rigify's head
                    # follows the torso, not the neck), so from now on it expects the moves of the one above.
                    wrong = (ancestors >= 0) & ~done & done[ancestors]
                    ancestors[wrong] = ancestors[ancestors[wrong]]
                bases = retarget.correct_bases(bases, evaluated, desired[t], located, ancestors)
            worst = np.maximum(worst, (angles, distances))
            solved[t] = bases
            correction = bases @ np.linalg.inv(start[t])
    finally:
        for name, value in saved_switches.items():
            pose_bones[name][RIGIFY_SWITCH] = value
        if saved_action is not None:
            anim.action = saved_action
            view_layer.update()  # the action is evaluated once on assignment; the pose put back below stays
        for bone, values in saved_pose.items():
            _restore_pose(pose_bones[bone], values)
        view_layer.update()
    off = [k for k in range(len(bones)) if worst[0, k] > FIT_DEGREES or worst[1, k] > FIT_METRES]
    off.sort(key=lambda k: ancestors[k] in off)  # the bones that cause it first, then those they carry along
    if off:
        listed = ", ".join(f"{bones[k]!r} ({worst[0, k]:.1f} deg, {worst[1, k] * 100:.1f} cm)" for k in off[:6])
        raise ValueError(
            f"retarget onto {obj.name!r}: {len(off)} mapped bone(s) cannot reach the motion on the evaluated rig "
            f"(worst errors {listed}); constraints, drivers or locks override them, so this bone mapping does not "
            "fit. Map the rig's animation controls instead"
        )
    rotations = {bone: smpl_math.quat_continuous(smpl_math.matrix_to_quat(solved[:, k, :3, :3]))
                 for k, bone in enumerate(bones)}
    locations = {bone: solved[:, k, :3, 3].copy() for k, bone in enumerate(bones) if located[k]}
    return rotations, locations


def _rotation_channels(pose_bone: bpy.types.PoseBone, quats: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
    """Channels for quaternions [T,4] in the bone's own rotation mode (Euler modes kept, axis-angle switched)."""
    if pose_bone.rotation_mode == "AXIS_ANGLE":
        pose_bone.rotation_mode = "QUATERNION"
    if pose_bone.rotation_mode == "QUATERNION":
        path = _bone_path(pose_bone.name, "rotation_quaternion")
        return {(path, i): quats[:, i] for i in range(4)}
    eulers = np.empty((len(quats), 3))
    previous = Euler((0.0, 0.0, 0.0), pose_bone.rotation_mode)
    for t, q in enumerate(quats):
        previous = Quaternion(q).to_euler(pose_bone.rotation_mode, previous)  # compatible with the last frame
        eulers[t] = previous
    path = _bone_path(pose_bone.name, "rotation_euler")
    return {(path, i): eulers[:, i] for i in range(3)}


def retarget_onto(
    target_obj: bpy.types.Object,
    pose: np.ndarray,
    transl: np.ndarray,
    rest_joints_yup: np.ndarray,
    fit: retarget.RigFit | None = None,
    options: retarget.RetargetOptions = retarget.RetargetOptions(),
    fps: float = 20.0,
    action_name: str = "SafeMotion retarget",
    frame_start: float = 1.0,
) -> tuple[bpy.types.Action, retarget.RetargetResult]:
    """Key an SMPL motion (backend axes) onto an armature, with the rig fit that `check_target` / `fit_target` made
    of it (None: the auto-detected preset, checked now); the rig is not checked again.

    The mapped bones get rotation keys (in their rotation mode), the hips and root bone location keys, solved so
    that the evaluated rig follows the motion (`solve_evaluated`); Rigify's IK/FK switches are keyed to FK. Every
    check runs before the action is created: on ValueError nothing was added or changed.
    """
    if fit is None:
        fit = fit_target(target_obj, "AUTO")
    source = retarget.source_from_smpl(pose, transl, rest_joints_yup, fps=fps)
    result = retarget.retarget(source, fit, options)
    switches = limb_switches(target_obj)
    rotations, locations = solve_evaluated(target_obj, result, switches)
    result = retarget.RetargetResult(rotations=rotations, locations=locations, scale=result.scale,
                                     targets=result.targets, ancestors=result.ancestors)
    channels: dict[tuple[str, int], np.ndarray] = {}
    for bone, quats in rotations.items():
        channels.update(_rotation_channels(target_obj.pose.bones[bone], quats))
    for bone, location in locations.items():
        channels.update({(_bone_path(bone, "location"), i): location[:, i] for i in range(3)})
    for name in switches:
        path = f'pose.bones["{bpy.utils.escape_identifier(name)}"]["{RIGIFY_SWITCH}"]'
        channels[(path, 0)] = np.ones(len(source.pelvis))
    action = bpy.data.actions.new(action_name)
    keyframes.write_keys(target_obj, action, channels, _frames(len(source.pelvis), fps, frame_start))
    return action, result


# --- demo rig -------------------------------------------------------------------------------------------------------

# Mixamo-like proportions (metres, Z-up, facing -Y, the character's left at +X): (name, parent, head, tail).
_DEMO_SPINE = (
    ("Hips", None, (0.0, 0.0, 1.0), (0.0, 0.01, 1.1)),
    ("Spine", "Hips", (0.0, 0.01, 1.1), (0.0, 0.0, 1.22)),
    ("Spine1", "Spine", (0.0, 0.0, 1.22), (0.0, -0.01, 1.34)),
    ("Spine2", "Spine1", (0.0, -0.01, 1.34), (0.0, 0.0, 1.5)),
    ("Neck", "Spine2", (0.0, 0.0, 1.5), (0.0, -0.02, 1.6)),
    ("Head", "Neck", (0.0, -0.02, 1.6), (0.0, -0.02, 1.8)),
)
_DEMO_ARM = ((0.05, 0.0, 1.45), (0.17, 0.0, 1.45), (0.45, 0.01, 1.45), (0.72, 0.0, 1.45), (0.9, 0.0, 1.45))
_DEMO_LEG = ((0.09, 0.0, 0.95), (0.09, -0.01, 0.52), (0.09, 0.02, 0.09), (0.09, -0.1, 0.02), (0.09, -0.18, 0.02))


def demo_rig_bones(a_pose: bool = False, prefix: str = "mixamorig:") -> list[BoneSpec]:
    """Bones of the demo rig: Mixamo names, T-pose or A-pose (arms 45 degrees down)."""
    specs = [BoneSpec(prefix + n, h, t, prefix + p if p else None) for n, p, h, t in _DEMO_SPINE]
    for side, sign in (("Left", 1.0), ("Right", -1.0)):
        arm = np.array(_DEMO_ARM) * (sign, 1.0, 1.0)
        if a_pose:
            angle = np.radians(45.0) * sign
            turn = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
            arm[1:] = (arm[1:] - arm[1]) @ turn.T + arm[1]
        leg = np.array(_DEMO_LEG) * (sign, 1.0, 1.0)
        for chain, names, parent in (
            (arm, ("Shoulder", "Arm", "ForeArm", "Hand"), "Spine2"),
            (leg, ("UpLeg", "Leg", "Foot", "ToeBase"), "Hips"),
        ):
            for k, name in enumerate(names):
                specs.append(
                    BoneSpec(prefix + side + name, tuple(chain[k]), tuple(chain[k + 1]), prefix + parent)
                )
                parent = side + name
    return specs


def _box(head: np.ndarray, tail: np.ndarray, width: float) -> tuple[list[tuple[float, ...]], list[tuple[int, ...]]]:
    """Vertices and quad faces of a box of `width` around the segment head -> tail."""
    axis = tail - head
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 * np.linalg.norm(axis) else np.array([1.0, 0.0, 0.0])
    u = np.cross(axis, helper)
    u *= width / 2 / np.linalg.norm(u)
    v = np.cross(axis, u)
    v *= width / 2 / np.linalg.norm(v)
    corners = [p + su * u + sv * v for p in (head, tail) for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    faces = [(0, 1, 2, 3), (7, 6, 5, 4), (0, 4, 5, 1), (1, 5, 6, 2), (2, 6, 7, 3), (3, 7, 4, 0)]
    return [tuple(c) for c in corners], faces


def build_demo_rig(name: str = "SafeMotion demo", a_pose: bool = False, prefix: str = "mixamorig:") -> bpy.types.Object:
    """Mixamo-named demo armature with a simple box body skinned to it (one vertex group per bone)."""
    specs = demo_rig_bones(a_pose, prefix)
    rig = build_armature(name, specs)
    vertices: list[tuple[float, ...]] = []
    faces: list[tuple[int, ...]] = []
    groups: dict[str, list[int]] = {}
    for spec in specs:
        head, tail = np.array(spec.head), np.array(spec.tail)
        width = float(np.clip(0.35 * np.linalg.norm(tail - head), 0.04, 0.14))
        box_vertices, box_faces = _box(head, tail, width)
        groups[spec.name] = list(range(len(vertices), len(vertices) + len(box_vertices)))
        faces += [tuple(i + len(vertices) for i in face) for face in box_faces]
        vertices += box_vertices
    mesh = bpy.data.meshes.new(name + " body")
    mesh.from_pydata(vertices, [], faces)
    mesh.update()
    body = bpy.data.objects.new(name + " body", mesh)
    bpy.context.scene.collection.objects.link(body)
    for bone, indices in groups.items():
        body.vertex_groups.new(name=bone).add(indices, 1.0, "REPLACE")
    modifier = body.modifiers.new("Armature", "ARMATURE")
    modifier.object = rig
    body.parent = rig
    return rig
