"""SMPL body kinematics in numpy: the T-pose rest skeleton, analytic IK from joint positions, forward kinematics.

Conventions (the ones smplx uses): 24 joints with `skeleton.SMPL24_PARENTS`; `pose[t, j]` is joint j's local rotation as
an axis-angle vector (joint 0 = global orientation); forward kinematics rotates each rest offset by its parent's global
rotation and places the pelvis at `rest_joints[0] + transl`. Axes are HumanML3D's: Y-up, facing +Z, left at +x, metres.

Rest pose: an SMPL-like T-pose with an upright torso (hips along x, neck above the pelvis) curved like a standing
person's spine. `clip_rest_joints` measures a clip's own bone lengths and torso (its typical posture), which makes the
round trip joints -> pose -> joints exact and keeps the spine rotations of an ordinary upright frame near zero.

Joint positions fix each bone's direction but not its twist, so `joints_to_smpl` builds every joint's world frame from
its bone direction plus a body reference and compares it with the same frame in the rest pose:

- pelvis and spine3 (three children each): best-fit rotation of the three child offsets;
- spine1 / spine2: the spine direction plus the left-right axis, blended from hips (2/3, 1/3) to collars (1/3, 2/3),
  so the torso twist is shared along the spine;
- hip + knee, shoulder + elbow: the limb plane (normal = hinge axis of the knee/elbow); when the limb is nearly straight
  the plane is undefined and the parent's frame, swung onto the bone, takes over smoothly;
- neck, collars, ankles: the parent's frame (no twist of their own);
- wrists, feet, head, hands: no child in the 22 joints, so their local rotation is identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safemotion.motion import rotations as rot
from safemotion.motion import skeleton

NUM_JOINTS = 24
PARENTS = np.array(skeleton.SMPL24_PARENTS)

# T-pose bone directions (joint minus parent). Round numbers for an upright body (the pelvis-to-neck axis vertical): the
# pelvis joint sits above and behind the hips, the spine curves like a standing person's (the median posture of the
# HumanML3D sample clip), collars rise to the shoulders, the head joint is up-forward, the feet point forward and down.
_TPOSE_DIRECTIONS = np.array(
    [
        [0, 0, 0],  # pelvis (root)
        [0.55, -0.8, 0.2], [-0.55, -0.8, 0.2],  # hips
        [0, 0.87, -0.5],  # spine1
        [0, -1, 0], [0, -1, 0],  # knees
        [0, 0.97, 0.23],  # spine2
        [0, -1, 0], [0, -1, 0],  # ankles
        [0, 0.75, 0.65],  # spine3
        [0, -0.34, 0.94], [0, -0.34, 0.94],  # feet
        [0, 1, 0],  # neck
        [0.5, 0.85, -0.1], [-0.5, 0.85, -0.1],  # collars
        [0, 0.82, 0.57],  # head
        [1, 0, 0], [-1, 0, 0],  # shoulders
        [1, 0, 0], [-1, 0, 0],  # elbows
        [1, 0, 0], [-1, 0, 0],  # wrists
        [1, 0, 0], [-1, 0, 0],  # hands
    ],
    dtype=np.float64,
)
TPOSE_DIRECTIONS = _TPOSE_DIRECTIONS / np.maximum(np.linalg.norm(_TPOSE_DIRECTIONS, axis=1, keepdims=True), 1e-12)

# Joints with three children -> (upper child, left child, right child). Their rotation is the best fit of all three
# child offsets.
_TRIADS = {0: (3, 1, 2), 9: (12, 13, 14)}
# Spine joints -> (child, weight of the hips' left-right axis; the collars' axis gets the rest).
_SPINE = {3: (6, 2.0 / 3.0), 6: (9, 1.0 / 3.0)}
# Limbs: upper joint -> (middle joint, end joint, direction the lower bone bends towards in the T-pose).
_LIMBS = {
    1: (4, 7, (0.0, 0.0, -1.0)), 2: (5, 8, (0.0, 0.0, -1.0)),  # knees bend backwards
    16: (18, 20, (0.0, 0.0, 1.0)), 17: (19, 21, (0.0, 0.0, 1.0)),  # elbows bend forwards
}
# Joints that follow their parent's frame -> (child, rest reference axis roughly perpendicular to the bone).
_FOLLOWERS = {
    7: (10, (1.0, 0.0, 0.0)), 8: (11, (1.0, 0.0, 0.0)),  # ankles
    12: (15, (1.0, 0.0, 0.0)),  # neck
    13: (16, (0.0, 0.0, 1.0)), 14: (17, (0.0, 0.0, 1.0)),  # collars
}
# Limb bend (degrees off straight, measured through its sine, which is what makes the plane well defined) below which
# the limb plane is ignored and above which it alone sets the twist.
LIMB_PLANE_BEND = (5.0, 20.0)


@dataclass
class SmplMotion:
    """SMPL pose sequence: local axis-angle rotations, root translation, the rest skeleton they apply to, frame rate."""

    pose: np.ndarray  # [T, 24, 3] axis-angle, joint 0 = global orientation
    transl: np.ndarray  # [T, 3] pelvis position minus rest_joints[0]
    rest_joints: np.ndarray  # [24, 3]
    fps: float = 20.0

    def __post_init__(self) -> None:
        frames = self.pose.shape[0] if self.pose.ndim == 3 else -1
        if self.pose.shape != (frames, NUM_JOINTS, 3):
            raise ValueError(f"SmplMotion.pose: expected shape [T, 24, 3], got {self.pose.shape}")
        if self.transl.shape != (frames, 3):
            raise ValueError(f"SmplMotion.transl: expected shape [{frames}, 3] to match pose, got {self.transl.shape}")
        if self.rest_joints.shape != (NUM_JOINTS, 3):
            raise ValueError(f"SmplMotion.rest_joints: expected shape [24, 3], got {self.rest_joints.shape}")
        if not self.fps > 0:
            raise ValueError(f"SmplMotion.fps: expected a positive frame rate, got {self.fps}")

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return self.pose.shape[0]


# --- frames ---------------------------------------------------------------------------------------------------------


def _normalize(v: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis (zero vectors stay zero)."""
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _frame(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Orthonormal frames [...,3,3] with columns (primary, secondary made perpendicular to it, their cross product)."""
    a = _normalize(primary)
    b = _normalize(secondary - (secondary * a).sum(-1, keepdims=True) * a)
    return np.stack([a, b, np.cross(a, b)], axis=-1)


def _body_frame(joints: np.ndarray) -> np.ndarray:
    """Body frame [...,3,3]: x = right hip to left hip, y = pelvis to neck (made perpendicular), z = forward.

    A rest pose is upright when this frame is the identity: hips along x, neck straight above the pelvis, facing +Z.
    """
    return _frame(joints[..., 1, :] - joints[..., 2, :], joints[..., 12, :] - joints[..., 0, :])


# --- rest skeleton --------------------------------------------------------------------------------------------------


# Torso bones: the offsets turned upright in every rest pose.
_TORSO = (1, 2, 3, 6, 9, 12, 13, 14, 15)


def _rest_from_offsets(offsets: np.ndarray) -> np.ndarray:
    """Chain offsets [24,3] into a rest pose with the torso upright (see `_body_frame`), lowest joint at y = 0."""

    def chain(offsets: np.ndarray) -> np.ndarray:
        joints = np.zeros((NUM_JOINTS, 3))
        for j in range(1, NUM_JOINTS):
            joints[j] = joints[PARENTS[j]] + offsets[j]
        return joints

    offsets = offsets.copy()
    offsets[list(_TORSO)] = offsets[list(_TORSO)] @ _body_frame(chain(offsets))
    joints = chain(offsets)
    joints[:, 1] -= joints[:, 1].min()
    return joints


def _check_joints22(joints: np.ndarray, name: str) -> np.ndarray:
    """Return joints as float64 [T,22,3], raising on another shape or non-finite values."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (22, 3) or joints.shape[0] == 0:
        raise ValueError(f"{name}: expected joint positions [T, 22, 3] (HumanML3D order, metres), got {joints.shape}")
    if not np.isfinite(joints).all():
        raise ValueError(f"{name}: joint positions contain NaN or inf")
    lengths = np.linalg.norm(skeleton.bone_offsets(joints)[:, 1:], axis=-1)
    if lengths.min() < 1e-6:
        frame, joint = np.unravel_index(np.argmin(lengths), lengths.shape)
        raise ValueError(f"{name}: frame {frame}: joint {joint + 1} coincides with its parent (zero-length bone)")
    return joints


def smpl_rest_joints(bone_lengths: np.ndarray | None = None) -> np.ndarray:
    """SMPL-like T-pose [24,3] from bone lengths ([22] or [24] with hands; default HumanML3D's), lowest joint at y=0."""
    lengths = np.zeros(NUM_JOINTS)
    lengths[:22] = skeleton.BONE_LENGTHS
    lengths[22:] = skeleton.HAND_LENGTH
    if bone_lengths is not None:
        bone_lengths = np.asarray(bone_lengths, dtype=np.float64)
        if bone_lengths.shape not in ((22,), (24,)) or not np.all(bone_lengths[1:] > 0):
            raise ValueError(
                f"smpl_rest_joints: expected 22 or 24 positive bone lengths (entry 0, the root, is ignored), "
                f"got shape {bone_lengths.shape}"
            )
        lengths[: len(bone_lengths)] = bone_lengths
    return _rest_from_offsets(TPOSE_DIRECTIONS * lengths[:, None])


def clip_bone_lengths(joints: np.ndarray) -> np.ndarray:
    """Median bone lengths [22] of a clip [T,22,3] (entry 0, the root, is 0)."""
    joints = _check_joints22(joints, "clip_bone_lengths")
    offsets = skeleton.bone_offsets(joints)
    lengths = np.median(np.linalg.norm(offsets, axis=-1), axis=0)
    lengths[0] = 0.0
    return lengths


def _triad_frame(joints: np.ndarray, joint: int, children: tuple[int, int, int]) -> np.ndarray:
    """World frame [...,3,3] of a three-child joint: x = right child to left child, y = towards the upper child."""
    across = joints[..., children[1], :] - joints[..., children[2], :]
    up = joints[..., children[0], :] - joints[..., joint, :]
    return _frame(across, up)


def _mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """Chordal mean [3,3] of rotation matrices [T,3,3] (their average projected back onto the rotations)."""
    u, _, vt = np.linalg.svd(rotations.mean(axis=0))
    u[:, 2] *= np.sign(np.linalg.det(u @ vt))
    return u @ vt


# Torso bones whose rest direction a clip measures (its median posture in the body frame): spine and head.
_TORSO_CHAIN = ((3, 6), (6, 9), (12, 15))


def clip_rest_joints(joints: np.ndarray) -> np.ndarray:
    """T-pose [24,3] with a clip's own bone lengths and torso shape, so that IK + FK reproduce the clip.

    The pelvis and spine3 each carry three children with one rotation, which only works if the rest pose has the
    clip's exact shape of those three offsets; it is measured in the joint's own frame and placed with the clip's mean
    orientation relative to the body frame; the spine and head bones take their median direction in that frame. So the
    clip's typical posture is the rest pose of the torso, while the limbs take the T-pose directions.
    """
    joints = _check_joints22(joints, "clip_rest_joints")
    lengths = np.zeros(NUM_JOINTS)
    lengths[:22] = clip_bone_lengths(joints)
    lengths[22:] = skeleton.HAND_LENGTH
    offsets = TPOSE_DIRECTIONS * lengths[:, None]
    body = _body_frame(joints)
    for joint, children in _TRIADS.items():
        frame = _triad_frame(joints, joint, children)
        placement = _mean_rotation(np.swapaxes(body, -1, -2) @ frame)
        for child in children:
            shape = np.median(np.einsum("tji,tj->ti", frame, joints[:, child] - joints[:, joint]), axis=0)
            offsets[child] = placement @ shape
    for parent, child in _TORSO_CHAIN:
        directions = _normalize(np.einsum("tji,tj->ti", body, joints[:, child] - joints[:, parent]))
        offsets[child] = _normalize(np.median(directions, axis=0)) * lengths[child]
    return _rest_from_offsets(offsets)


# --- forward kinematics ---------------------------------------------------------------------------------------------


def _check_pose(pose: np.ndarray, name: str) -> np.ndarray:
    """Return pose as float64 [T,24,3], raising on another shape."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.ndim != 3 or pose.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"{name}: expected axis-angle pose [T, 24, 3], got {pose.shape}")
    return pose


def smpl_global_rotations(pose: np.ndarray) -> np.ndarray:
    """World rotation matrices [T,24,3,3] of every joint from local axis-angle rotations [T,24,3]."""
    local = rot.axis_angle_to_matrix(_check_pose(pose, "smpl_global_rotations"))
    world = np.empty_like(local)
    world[:, 0] = local[:, 0]
    for j in range(1, NUM_JOINTS):
        world[:, j] = world[:, PARENTS[j]] @ local[:, j]
    return world


def smpl_forward_kinematics(pose: np.ndarray, transl: np.ndarray, rest_joints: np.ndarray) -> np.ndarray:
    """Joint positions [T,24,3] of an SMPL pose [T,24,3] with root translation [T,3] on a rest skeleton [24,3]."""
    pose = _check_pose(pose, "smpl_forward_kinematics")
    transl = np.asarray(transl, dtype=np.float64)
    rest_joints = np.asarray(rest_joints, dtype=np.float64)
    if transl.shape != (pose.shape[0], 3):
        raise ValueError(
            f"smpl_forward_kinematics: expected transl [{pose.shape[0]}, 3] to match pose, got {transl.shape}"
        )
    if rest_joints.shape != (NUM_JOINTS, 3):
        raise ValueError(f"smpl_forward_kinematics: expected rest_joints [24, 3], got {rest_joints.shape}")
    world = smpl_global_rotations(pose)
    offsets = skeleton.bone_offsets(rest_joints, skeleton.SMPL24_PARENTS)
    joints = np.empty(pose.shape)
    joints[:, 0] = rest_joints[0] + transl
    for j in range(1, NUM_JOINTS):
        p = PARENTS[j]
        joints[:, j] = joints[:, p] + world[:, p] @ offsets[j]
    return joints


# --- inverse kinematics ---------------------------------------------------------------------------------------------


def _frame_rotation(
    bone: np.ndarray, rest_bone: np.ndarray, reference: np.ndarray, rest_reference: np.ndarray | tuple[float, ...]
) -> np.ndarray:
    """World rotation [...,3,3] taking the rest frame of (bone, reference) onto the current one."""
    rest = _frame(np.asarray(rest_bone, dtype=np.float64), np.asarray(rest_reference, dtype=np.float64))
    return _frame(bone, reference) @ np.swapaxes(rest, -1, -2)


def _best_rotation(rest_vectors: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Rotations [T,3,3] minimising sum_k |R rest_k - v_k|^2 (Kabsch) for rest vectors [K,3] and vectors [T,K,3]."""
    cov = np.einsum("tki,kj->tij", vectors, rest_vectors)
    u, _, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= sign[..., None]
    return u @ vt


def _rotate_about(v: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate vectors v [...,3] about unit axes [...,3] by angles [...] (Rodrigues)."""
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    return v * c + np.cross(axis, v) * s + axis * (axis * v).sum(-1, keepdims=True) * (1 - c)


def _limb_hinge(upper: np.ndarray, lower: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Hinge axis [T,3] of a limb: the plane normal of a bent limb, the fallback axis for a straight one.

    In between, the twist angle from the fallback to the plane normal (about the upper bone) is scaled down smoothly,
    so the twist never jumps when the limb straightens or bends.
    """
    direction = _normalize(upper)
    normal = np.cross(direction, _normalize(lower))
    bend = np.degrees(np.arcsin(np.clip(np.linalg.norm(normal, axis=-1), 0.0, 1.0)))
    lo, hi = LIMB_PLANE_BEND
    t = np.clip((bend - lo) / (hi - lo), 0.0, 1.0)
    weight = t * t * (3 - 2 * t)
    fallback = _normalize(fallback - (fallback * direction).sum(-1, keepdims=True) * direction)
    twist = np.arctan2((direction * np.cross(fallback, normal)).sum(-1), (fallback * normal).sum(-1))
    return _rotate_about(fallback, direction, weight * twist)


def _unwrap_axis_angle(aa: np.ndarray) -> np.ndarray:
    """Axis-angle [T,J,3] made continuous over time by adding whole turns (angles may leave [0, pi])."""
    out = aa.copy()
    angle = np.linalg.norm(aa, axis=-1)
    axis = aa / np.maximum(angle, 1e-12)[..., None]
    for t in range(1, len(aa)):
        along = (out[t - 1] * axis[t]).sum(-1)
        turns = np.where(angle[t] > 1e-6, np.round((along - angle[t]) / (2 * np.pi)), 0.0)
        out[t] = axis[t] * (angle[t] + 2 * np.pi * turns)[..., None]
    return out


def joints_to_smpl(joints: np.ndarray, fps: float = 20.0, rest_joints: np.ndarray | None = None) -> SmplMotion:
    """Analytic IK: SMPL pose and root translation for joint positions [T,22,3] (default rest: the clip's T-pose)."""
    joints = _check_joints22(joints, "joints_to_smpl")
    rest = clip_rest_joints(joints) if rest_joints is None else np.asarray(rest_joints, dtype=np.float64)
    if rest.shape != (NUM_JOINTS, 3):
        raise ValueError(f"joints_to_smpl: expected rest_joints [24, 3], got {rest.shape}")
    hips_across = _normalize(joints[:, 1] - joints[:, 2])
    collars_across = _normalize(joints[:, 13] - joints[:, 14])
    rest_hips, rest_collars = _normalize(rest[1] - rest[2]), _normalize(rest[13] - rest[14])
    world: list[np.ndarray | None] = [None] * NUM_JOINTS

    def bone(j: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        return joints[:, c] - joints[:, j], rest[c] - rest[j]

    # Index order visits parents first; knees and elbows are solved together with their limb.
    for j in range(NUM_JOINTS):
        if world[j] is not None:
            continue
        parent = world[PARENTS[j]] if j > 0 else None
        if j in _TRIADS:
            rest_offsets = np.stack([rest[c] - rest[j] for c in _TRIADS[j]])
            offsets = np.stack([joints[:, c] - joints[:, j] for c in _TRIADS[j]], axis=1)
            world[j] = _best_rotation(rest_offsets, offsets)
        elif j in _SPINE:
            child, hips_weight = _SPINE[j]
            across = hips_weight * hips_across + (1 - hips_weight) * collars_across
            rest_across = hips_weight * rest_hips + (1 - hips_weight) * rest_collars
            world[j] = _frame_rotation(*bone(j, child), across, rest_across)
        elif j in _LIMBS:
            middle, end, bend_towards = _LIMBS[j]
            upper_bone, rest_upper = bone(j, middle)
            lower_bone, rest_lower = bone(middle, end)
            rest_hinge = _normalize(np.cross(rest_upper, np.asarray(bend_towards)))
            # Fallback hinge: the parent's frame carried by the shortest rotation onto the current bone direction.
            swing = rot.qbetween(parent @ rest_upper, upper_bone)
            hinge = _limb_hinge(upper_bone, lower_bone, rot.qrot(swing, parent @ rest_hinge))
            world[j] = _frame_rotation(upper_bone, rest_upper, hinge, rest_hinge)
            world[middle] = _frame_rotation(lower_bone, rest_lower, hinge, rest_hinge)
        elif j in _FOLLOWERS:
            child, rest_axis = _FOLLOWERS[j]
            world[j] = _frame_rotation(*bone(j, child), parent @ np.asarray(rest_axis), rest_axis)
        else:  # wrists, feet, head, hands: no child data, identity local rotation
            world[j] = parent

    rotations = np.stack(world, axis=1)
    local = rotations.copy()
    local[:, 1:] = np.swapaxes(rotations[:, PARENTS[1:]], -1, -2) @ rotations[:, 1:]
    pose = _unwrap_axis_angle(rot.matrix_to_axis_angle(local))
    return SmplMotion(pose=pose, transl=joints[:, 0] - rest[0], rest_joints=rest, fps=float(fps))
