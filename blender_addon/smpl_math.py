"""SMPL kinematics and rotation conversions in numpy for the add-on (no bpy, no backend import).

It mirrors the backend's conventions (safemotion.motion.smpl) because the add-on must not import the backend:
24 joints with `PARENTS`; `pose[t, j]` is joint j's local rotation as an axis-angle vector (joint 0 = global
orientation) relative to a T-pose rest skeleton whose joint frames are all the identity; the pelvis sits at
`rest_joints[0] + transl`. Backend axes are Y-up, facing +Z, left at +x; Blender's are Z-up, and
(x, y, z) -> (x, -z, y) (+90 degrees about X) turns one into the other (the character then faces -Y).

Quaternions are (w, x, y, z), Hamilton products; matrices act on column vectors.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee",
    "spine2", "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot",
    "neck", "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
NUM_JOINTS = len(JOINT_NAMES)

# Y-up (backend) to Z-up (Blender): (x, y, z) -> (x, -z, y).
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

_EPS = 1e-12


def _unit(v: np.ndarray) -> np.ndarray:
    """Vectors scaled to unit length along the last axis (zero vectors stay zero)."""
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


# --- rotations ------------------------------------------------------------------------------------------------------


def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4] from axis-angle vectors [..., 3] (axis * angle in radians)."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    small = angle < 1e-6
    # sin(angle/2)/angle, with its Taylor series near zero.
    ratio = np.where(small, 0.5 - angle**2 / 48.0, np.sin(angle / 2) / np.where(small, 1.0, angle))
    return np.concatenate([np.cos(angle / 2), aa * ratio], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (normalised first)."""
    w, x, y, z = np.moveaxis(_unit(np.asarray(q, dtype=np.float64)), -1, 0)
    m = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return m.reshape(m.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4] with w >= 0 from rotation matrices [..., 3, 3]."""
    m = np.asarray(m, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four algebraically equal solutions; per element take the one with the largest (best-conditioned) pivot.
    four_sq = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1)
    candidates = np.stack(
        [
            np.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], axis=-1),
            np.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], axis=-1),
            np.stack([m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21], axis=-1),
            np.stack([m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]], axis=-1),
        ],
        axis=-2,
    )
    best = np.argmax(four_sq, axis=-1)
    q = _unit(np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :])
    return np.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] from axis-angle vectors [..., 3]."""
    return quat_to_matrix(axis_angle_to_quat(aa))


def rotation_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest-arc rotation matrix [3, 3] turning direction u [3] onto direction v [3] (a half turn if opposite)."""
    u, v = _unit(np.asarray(u, dtype=np.float64)), _unit(np.asarray(v, dtype=np.float64))
    w = 1.0 + float(u @ v)
    if w < 1e-9:
        helper = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        q = np.concatenate([[0.0], _unit(np.cross(u, helper))])
    else:
        q = np.concatenate([[w], np.cross(u, v)])
    return quat_to_matrix(q)


def quat_continuous(q: np.ndarray) -> np.ndarray:
    """Quaternions [T, ..., 4] with signs flipped so that consecutive frames have a non-negative dot product."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[0] < 2:
        return q.copy()
    flips = (q[1:] * q[:-1]).sum(-1) < 0
    odd = np.cumsum(flips, axis=0) % 2 == 1
    out = q.copy()
    out[1:][odd] *= -1
    return out


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """Axis-angle vectors [..., 3] of quaternions [..., 4] (angles in [0, pi])."""
    q = _unit(np.asarray(q, dtype=np.float64))
    q = np.where(q[..., :1] < 0, -q, q)
    sin_half = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., :1])
    # angle / sin(angle/2) tends to 2 for small angles.
    ratio = np.where(sin_half > 1e-9, angle / np.maximum(sin_half, _EPS), 2.0)
    return q[..., 1:] * ratio


def resample_motion(pose: np.ndarray, transl: np.ndarray, fps: float, new_fps: float) -> tuple[np.ndarray, np.ndarray]:
    """An SMPL motion (pose [T, J, 3] axis-angle, transl [T, 3]) at `fps` sampled at `new_fps` over the same time
    span (rotations slerped, translation linear); the last sample is the last whole frame within the span."""
    pose, transl = np.asarray(pose, dtype=np.float64), np.asarray(transl, dtype=np.float64)
    if not (fps > 0 and new_fps > 0) or len(pose) < 1:
        raise ValueError(f"resample_motion: fps {fps} and {new_fps} must be positive and the motion non-empty")
    if abs(fps - new_fps) < 1e-9:
        return pose.copy(), transl.copy()
    count = int(np.floor((len(pose) - 1) * new_fps / fps + 1e-6)) + 1
    times = np.arange(count) * fps / new_fps  # in source frames
    low = np.minimum(np.floor(times).astype(int), len(pose) - 1)
    high = np.minimum(low + 1, len(pose) - 1)
    frac = (times - low)[:, None]
    new_transl = transl[low] * (1 - frac) + transl[high] * frac
    quats = quat_continuous(axis_angle_to_quat(pose))
    a, b = quats[low], quats[high]
    dot = np.clip(np.sum(a * b, axis=-1, keepdims=True), -1.0, 1.0)
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    f = frac[:, None]
    small = sin_theta < 1e-6
    wa = np.where(small, 1 - f, np.sin((1 - f) * theta) / np.where(small, 1.0, sin_theta))
    wb = np.where(small, f, np.sin(f * theta) / np.where(small, 1.0, sin_theta))
    return quat_to_axis_angle(wa * a + wb * b), new_transl


# --- SMPL forward kinematics ----------------------------------------------------------------------------------------


def _check_motion(pose: np.ndarray, transl: np.ndarray, rest_joints: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return pose [T,24,3], transl [T,3], rest_joints [24,3] as float64, raising on other shapes."""
    pose = np.asarray(pose, dtype=np.float64)
    transl = np.asarray(transl, dtype=np.float64)
    rest_joints = np.asarray(rest_joints, dtype=np.float64)
    if pose.ndim != 3 or pose.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"SMPL pose: expected axis-angle rotations [T, 24, 3], got shape {pose.shape}")
    if transl.shape != (pose.shape[0], 3):
        raise ValueError(f"SMPL transl: expected [{pose.shape[0]}, 3] to match the pose, got shape {transl.shape}")
    if rest_joints.shape != (NUM_JOINTS, 3):
        raise ValueError(f"SMPL rest_joints: expected [24, 3], got shape {rest_joints.shape}")
    return pose, transl, rest_joints


def global_rotations(pose: np.ndarray) -> np.ndarray:
    """World rotation matrices [T, 24, 3, 3] of every joint from local axis-angle rotations [T, 24, 3]."""
    local = axis_angle_to_matrix(pose)
    world = np.empty_like(local)
    world[:, 0] = local[:, 0]
    for j in range(1, NUM_JOINTS):
        world[:, j] = world[:, PARENTS[j]] @ local[:, j]
    return world


def forward_kinematics(pose: np.ndarray, transl: np.ndarray, rest_joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions [T, 24, 3] and world rotations [T, 24, 3, 3] of an SMPL motion (axes as given)."""
    pose, transl, rest_joints = _check_motion(pose, transl, rest_joints)
    world = global_rotations(pose)
    joints = np.empty(pose.shape)
    joints[:, 0] = rest_joints[0] + transl
    for j in range(1, NUM_JOINTS):
        p = PARENTS[j]
        joints[:, j] = joints[:, p] + world[:, p] @ (rest_joints[j] - rest_joints[p])
    return joints, world


# --- axes -----------------------------------------------------------------------------------------------------------


def points_to_z_up(points: np.ndarray) -> np.ndarray:
    """Positions or directions [..., 3] from the backend's Y-up frame to Blender's Z-up frame."""
    return np.asarray(points, dtype=np.float64) @ Y_UP_TO_Z_UP.T


def rotations_to_z_up(rotations: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] acting in the Y-up frame, expressed in Blender's Z-up frame."""
    return Y_UP_TO_Z_UP @ np.asarray(rotations, dtype=np.float64) @ Y_UP_TO_Z_UP.T
