"""HumanML3D 263-d motion features: extraction from joint positions, recovery of positions, mirroring.

Reproduces HumanML3D `motion_representation` / momask-codes `utils/motion_process.py` (see
shared/reference/humanml3d_format.md §3-§6), including its quirks: the root quaternion of frame 0 is identity, the IK
facing direction unpacks the face joints in a different order than the initial facing step, every chain restarts from
the root rotation, and the facing used for the root rotation is Gaussian-smoothed (sigma 20 frames, mode 'nearest').

Feature layout (per frame, J = 22):
    [0]        root yaw velocity: half the per-frame change of the facing-undoing yaw, radians (a left turn is < 0)
    [1:3]      root linear velocity (x, z) in the root's facing frame
    [3]        root height
    [4:67]     joints 1..21 relative to the root's XZ, rotated to face +Z
    [67:193]   6-D rotations of joints 1..21 (swing-only, HumanML3D IK)
    [193:259]  velocities of all 22 joints in the root's facing frame
    [259:263]  foot contacts [left ankle, left foot, right ankle, right foot]
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from safemotion.motion import rotations as rot
from safemotion.motion import skeleton

NUM_JOINTS = 22
FEATURE_DIM = 263

ROOT_ROT_VEL = slice(0, 1)
ROOT_LIN_VEL = slice(1, 3)
ROOT_Y = slice(3, 4)
RIC = slice(4, 4 + (NUM_JOINTS - 1) * 3)
ROT = slice(RIC.stop, RIC.stop + (NUM_JOINTS - 1) * 6)
LOCAL_VEL = slice(ROT.stop, ROT.stop + NUM_JOINTS * 3)
CONTACTS = slice(LOCAL_VEL.stop, LOCAL_VEL.stop + 4)

FACING_SMOOTH_SIGMA = 20.0
_UP = np.array([0.0, 1.0, 0.0])
_FORWARD = np.array([0.0, 0.0, 1.0])


def _check_joints(joints: np.ndarray, min_frames: int, name: str) -> np.ndarray:
    """Validate a [T, 22, 3] joint array and return it as float64."""
    joints = np.asarray(joints)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"{name}: expected joints of shape [T, {NUM_JOINTS}, 3] (HumanML3D order), got {joints.shape}")
    if joints.shape[0] < min_frames:
        raise ValueError(f"{name}: need at least {min_frames} frames, got {joints.shape[0]}")
    if not np.all(np.isfinite(joints)):
        frame = int(np.argwhere(~np.isfinite(joints))[0, 0])
        raise ValueError(f"{name}: joints contain NaN or inf (first at frame {frame})")
    return joints.astype(np.float64)


def _check_bones(joints: np.ndarray, name: str) -> None:
    """Raise if any bone has (near) zero length, which leaves its direction undefined."""
    parents = np.array(skeleton.SMPL22_PARENTS[1:])
    lengths = np.linalg.norm(joints[:, 1:] - joints[:, parents], axis=-1)
    if lengths.min() < 1e-8:
        frame, bone = np.unravel_index(np.argmin(lengths), lengths.shape)
        raise ValueError(
            f"{name}: joint {skeleton.SMPL22_NAMES[bone + 1]} coincides with its parent at frame {frame}; "
            "bone directions are undefined (check the joint mapping)"
        )


def _check_features(features: np.ndarray, name: str) -> np.ndarray:
    """Validate a [..., T, 263] feature array."""
    features = np.asarray(features)
    if features.ndim < 2 or features.shape[-1] != FEATURE_DIM:
        raise ValueError(f"{name}: expected features of shape [..., T, {FEATURE_DIM}], got {features.shape}")
    return features


# --- kinematics ---------------------------------------------------------------------------------------------------


def _facing_quaternions(across: np.ndarray, smooth: bool, name: str) -> np.ndarray:
    """Yaw quaternions [T, 4] turning the forward direction (up × across) to +Z."""
    forward = np.cross(_UP, across)
    width = np.linalg.norm(forward, axis=-1)
    if width.min() < 1e-8:
        raise ValueError(
            f"{name}: hips and shoulders give no horizontal facing direction at frame {int(np.argmin(width))} "
            "(left/right joints coincide or line up vertically)"
        )
    forward = forward / np.linalg.norm(across, axis=-1, keepdims=True)
    if smooth:
        forward = gaussian_filter1d(forward, FACING_SMOOTH_SIGMA, axis=0, mode="nearest")
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    return rot.qbetween(forward, np.broadcast_to(_FORWARD, forward.shape))


def inverse_kinematics(joints: np.ndarray, smooth_forward: bool = False) -> np.ndarray:
    """HumanML3D IK: per-joint quaternions [T, 22, 4] (root = facing, others = swing of the bone ending at the joint)."""
    joints = _check_joints(joints, 1, "inverse_kinematics")
    _check_bones(joints, "inverse_kinematics")
    # Quirk: HumanML3D unpacks face_joint_indx (r_hip, l_hip, r_sdr, l_sdr) as (l_hip, r_hip, r_sdr, l_sdr) here.
    first, second, sdr_r, sdr_l = skeleton.FACE_JOINTS
    across = (joints[:, second] - joints[:, first]) + (joints[:, sdr_r] - joints[:, sdr_l])
    root_quat = _facing_quaternions(across, smooth_forward, "inverse_kinematics")
    root_quat[0] = (1.0, 0.0, 0.0, 0.0)

    quats = np.zeros(joints.shape[:-1] + (4,))
    quats[:, 0] = root_quat
    for chain in skeleton.KINEMATIC_CHAINS:
        accumulated = root_quat
        for parent, child in zip(chain[:-1], chain[1:]):
            bone = joints[:, child] - joints[:, parent]
            bone = bone / np.linalg.norm(bone, axis=-1, keepdims=True)
            swing = rot.qbetween(np.broadcast_to(skeleton.RAW_OFFSETS[child], bone.shape), bone)
            local = rot.qmul(rot.qinv(accumulated), swing)
            quats[:, child] = local
            accumulated = rot.qmul(accumulated, local)
    return quats


def forward_kinematics(quats: np.ndarray, root_pos: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """HumanML3D FK: joints [T, 22, 3] from IK quaternions [T, 22, 4], root positions [T, 3] and bone offsets [22, 3]."""
    joints = np.zeros(quats.shape[:-1] + (3,))
    joints[:, 0] = root_pos
    for chain in skeleton.KINEMATIC_CHAINS:
        accumulated = quats[:, 0]
        for parent, child in zip(chain[:-1], chain[1:]):
            accumulated = rot.qmul(accumulated, quats[:, child])
            joints[:, child] = rot.qrot(accumulated, np.broadcast_to(offsets[child], root_pos.shape)) + joints[:, parent]
    return joints


def uniform_skeleton(joints: np.ndarray, target_offsets: np.ndarray | None = None) -> np.ndarray:
    """Re-target joints [T, 22, 3] to the target bone lengths, scaling the root path by the leg-length ratio."""
    joints = _check_joints(joints, 1, "uniform_skeleton")
    if target_offsets is None:
        target_offsets = skeleton.RAW_OFFSETS * skeleton.BONE_LENGTHS[:, None]
    target_offsets = np.asarray(target_offsets, dtype=np.float64)
    if target_offsets.shape != (NUM_JOINTS, 3):
        raise ValueError(f"uniform_skeleton: target_offsets must be [{NUM_JOINTS}, 3], got {target_offsets.shape}")
    # Source offsets as HumanML3D builds them: raw directions times frame-0 bone lengths.
    source_lengths = np.linalg.norm(skeleton.bone_offsets(joints[0]), axis=-1)
    knee, ankle = skeleton.LEG_LENGTH_JOINTS
    source_leg = source_lengths[knee] + source_lengths[ankle]
    target_leg = np.abs(target_offsets[knee]).max() + np.abs(target_offsets[ankle]).max()
    root_pos = joints[:, 0] * (target_leg / source_leg)
    return forward_kinematics(inverse_kinematics(joints), root_pos, target_offsets)


# --- canonical frame ----------------------------------------------------------------------------------------------


def canonicalize(joints: np.ndarray, ground: bool = True) -> np.ndarray:
    """Put joints [T, 22, 3] on the floor (min y = 0; `ground` False: heights kept), frame-0 root XZ at the origin,
    frame 0 facing +Z."""
    joints = _check_joints(joints, 1, "canonicalize")
    joints = joints.copy()
    if ground:
        joints[..., 1] -= joints[..., 1].min()
    joints -= joints[0, 0] * np.array([1.0, 0.0, 1.0])
    r_hip, l_hip, sdr_r, sdr_l = skeleton.FACE_JOINTS
    across = (joints[0, r_hip] - joints[0, l_hip]) + (joints[0, sdr_r] - joints[0, sdr_l])
    facing = _facing_quaternions(across[None], smooth=False, name="canonicalize")[0]
    return rot.qrot(np.broadcast_to(facing, joints.shape[:-1] + (4,)), joints)


def foot_contacts(joints: np.ndarray, feet_thre: float = skeleton.FEET_THRESHOLD) -> np.ndarray:
    """Contacts [T-1, 4] (left ankle, left foot, right ankle, right foot): squared step below `feet_thre`."""
    feet = list(skeleton.FOOT_LEFT) + list(skeleton.FOOT_RIGHT)
    step = joints[1:, feet] - joints[:-1, feet]
    return ((step**2).sum(-1) < feet_thre).astype(np.float64)


# --- extraction ---------------------------------------------------------------------------------------------------


def process_joints(
    joints: np.ndarray, feet_thre: float = skeleton.FEET_THRESHOLD, target_offsets: np.ndarray | None = None,
    ground_first: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """HumanML3D `process_file`: (features [T-1, 263] float32, canonical uniform-skeleton joints [T, 22, 3]).

    HumanML3D puts the retargeted motion's lowest joint on the floor. `ground_first` puts the motion's own lowest joint
    there before the retarget and keeps that floor after it: the retarget scales the root path by frame 0's leg ratio,
    so a motion whose bones vary (a decoded take) can come out with its feet under the floor, and lifting it by that
    depth changes every height feature.
    """
    joints = _check_joints(joints, 2, "process_joints")
    if ground_first:
        joints = joints - np.array([0.0, joints[..., 1].min(), 0.0])
    positions = canonicalize(uniform_skeleton(joints, target_offsets), ground=not ground_first)
    contacts = foot_contacts(positions, feet_thre)

    quats = inverse_kinematics(positions, smooth_forward=True)
    r_rot = quats[:, 0]
    root = positions[:, 0]
    lin_vel = rot.qrot(r_rot[1:], root[1:] - root[:-1])[:, [0, 2]]
    yaw_vel = np.arcsin(np.clip(rot.qmul(r_rot[1:], rot.qinv(r_rot[:-1]))[:, 2:3], -1.0, 1.0))
    root_y = root[:-1, 1:2]

    per_joint_rot = np.broadcast_to(r_rot[:, None], positions.shape[:-1] + (4,))
    local = positions - root[:, None] * np.array([1.0, 0.0, 1.0])
    ric = rot.qrot(per_joint_rot, local)[:-1, 1:].reshape(len(positions) - 1, -1)
    rot6d = rot.matrix_to_cont6d(rot.quat_to_matrix(quats[:-1, 1:])).reshape(len(positions) - 1, -1)
    local_vel = rot.qrot(per_joint_rot[:-1], positions[1:] - positions[:-1]).reshape(len(positions) - 1, -1)

    features = np.concatenate([yaw_vel, lin_vel, root_y, ric, rot6d, local_vel, contacts], axis=-1)
    return features.astype(np.float32), positions


def extract_features(joints: np.ndarray, feet_thre: float = skeleton.FEET_THRESHOLD,
                     ground_first: bool = False) -> np.ndarray:
    """263-d HumanML3D features [T-1, 263] (float32) from joint positions [T, 22, 3] in the HumanML3D frame
    (`ground_first`: see process_joints)."""
    return process_joints(joints, feet_thre, ground_first=ground_first)[0]


# --- recovery -----------------------------------------------------------------------------------------------------


def recover_root(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Root yaw quaternions [..., T, 4] and root positions [..., T, 3] from features [..., T, 263]."""
    data = _check_features(features, "recover_root").astype(np.float64)
    half_yaw = np.zeros(data.shape[:-1])
    half_yaw[..., 1:] = data[..., :-1, 0]
    half_yaw = np.cumsum(half_yaw, axis=-1)
    quat = np.zeros(data.shape[:-1] + (4,))
    quat[..., 0] = np.cos(half_yaw)
    quat[..., 2] = np.sin(half_yaw)

    steps = np.zeros(data.shape[:-1] + (3,))
    steps[..., 1:, 0] = data[..., :-1, 1]
    steps[..., 1:, 2] = data[..., :-1, 2]
    pos = np.cumsum(rot.qrot(rot.qinv(quat), steps), axis=-2)
    pos[..., 1] = data[..., 3]
    return quat, pos


def recover_from_ric(features: np.ndarray) -> np.ndarray:
    """Joint positions [..., T, 22, 3] from features [..., T, 263] (positions part only), in the input's float dtype."""
    features = _check_features(features, "recover_from_ric")
    quat, root = recover_root(features)
    ric = features[..., RIC].astype(np.float64).reshape(features.shape[:-1] + (NUM_JOINTS - 1, 3))
    inv = np.broadcast_to(rot.qinv(quat)[..., None, :], ric.shape[:-1] + (4,))
    joints = rot.qrot(inv, ric)
    joints[..., 0] += root[..., None, 0]
    joints[..., 2] += root[..., None, 2]
    joints = np.concatenate([root[..., None, :], joints], axis=-2)
    dtype = features.dtype if np.issubdtype(features.dtype, np.floating) else np.float64
    return joints.astype(dtype)


# --- mirroring ----------------------------------------------------------------------------------------------------


def mirror_joints(joints: np.ndarray) -> np.ndarray:
    """Left/right mirror of joints [..., 22, 3]: negate x and swap the left and right chains."""
    joints = np.asarray(joints)
    if joints.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"mirror_joints: expected [..., {NUM_JOINTS}, 3], got {joints.shape}")
    mirrored = joints[..., skeleton.mirror_index(), :].copy()
    mirrored[..., 0] *= -1
    return mirrored


# Sign pattern of a 6-D rotation under the mirror M = diag(-1, 1, 1): M R M has columns (-M c0, M c1).
_ROT6D_MIRROR_SIGN = np.array([1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
_XYZ_MIRROR_SIGN = np.array([-1.0, 1.0, 1.0])


def mirror_features(features: np.ndarray) -> np.ndarray:
    """Features of the mirrored motion [..., T, 263], matching extract_features(mirror_joints(joints)).

    Sign rules per slice (mirror plane x = 0, joints permuted left <-> right):
        yaw velocity: negated; linear velocity: x negated, z kept; root height: kept;
        RIC and local velocities: joints permuted, x negated;
        6-D rotations: joints permuted, (c0x, c0y, c0z, c1x, c1y, c1z) -> (c0x, -c0y, -c0z, -c1x, c1y, c1z);
        contacts: left and right pairs swapped.
    Exact equality holds when the source skeleton is left/right symmetric; otherwise uniform_skeleton scales the root by
    the right leg, which becomes the left leg after mirroring.
    """
    features = _check_features(features, "mirror_features")
    perm = skeleton.mirror_index()
    lead = features.shape[:-1]
    out = features.copy()
    out[..., ROOT_ROT_VEL] *= -1
    out[..., 1] *= -1
    ric = features[..., RIC].reshape(lead + (NUM_JOINTS - 1, 3))
    # RIC and 6-D rows index joints 1..21; the permutation fixes the root, so shift it by one.
    child_perm = perm[1:] - 1
    out[..., RIC] = (ric[..., child_perm, :] * _XYZ_MIRROR_SIGN).reshape(lead + (-1,))
    rot6d = features[..., ROT].reshape(lead + (NUM_JOINTS - 1, 6))
    out[..., ROT] = (rot6d[..., child_perm, :] * _ROT6D_MIRROR_SIGN).reshape(lead + (-1,))
    vel = features[..., LOCAL_VEL].reshape(lead + (NUM_JOINTS, 3))
    out[..., LOCAL_VEL] = (vel[..., perm, :] * _XYZ_MIRROR_SIGN).reshape(lead + (-1,))
    out[..., CONTACTS] = features[..., CONTACTS][..., [2, 3, 0, 1]]
    return out
