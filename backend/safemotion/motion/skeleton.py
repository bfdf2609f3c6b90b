"""The 22-joint HumanML3D/SMPL body skeleton and the 24-joint SMPL skeleton."""

from __future__ import annotations

import numpy as np

SMPL22_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee",
    "spine2", "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot",
    "neck", "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)
SMPL24_NAMES: tuple[str, ...] = SMPL22_NAMES + ("left_hand", "right_hand")

SMPL22_PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
SMPL24_PARENTS: tuple[int, ...] = SMPL22_PARENTS + (20, 21)

# t2m_kinematic_chain: right leg, left leg, spine/head, right arm, left arm.
KINEMATIC_CHAINS: tuple[tuple[int, ...], ...] = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)
RIGHT_CHAIN: tuple[int, ...] = (2, 5, 8, 11, 14, 17, 19, 21)
LEFT_CHAIN: tuple[int, ...] = (1, 4, 7, 10, 13, 16, 18, 20)

# Unit directions of each bone in HumanML3D's axis-aligned rest pose (Y-up, facing +Z, left at +x).
RAW_OFFSETS = np.array(
    [
        [0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0],
        [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1],
        [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0],
        [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
    ],
    dtype=np.float64,
)

# Bone lengths (metres) of HumanML3D's target skeleton, left/right averaged (humanml3d_format.md §2.1).
BONE_LENGTHS = np.array(
    [0.0, 0.106, 0.106, 0.132, 0.392, 0.392, 0.143, 0.429, 0.429, 0.057, 0.146, 0.146,
     0.219, 0.140, 0.140, 0.103, 0.127, 0.127, 0.260, 0.260, 0.268, 0.268],
    dtype=np.float64,
)
REST_PELVIS_HEIGHT = 0.821

# Feature-extraction constants (HumanML3D motion_representation).
FACE_JOINTS = (2, 1, 17, 16)  # r_hip, l_hip, r_shoulder, l_shoulder
FOOT_LEFT = (7, 10)
FOOT_RIGHT = (8, 11)
LEG_LENGTH_JOINTS = (5, 8)
FEET_THRESHOLD = 0.002

# Hands extend the wrists in SMPL; HumanML3D has none, so the 24-joint skeleton places them along the forearm.
HAND_LENGTH = 0.085


def mirror_index() -> np.ndarray:
    """Joint permutation that swaps left and right (22 joints)."""
    perm = np.arange(22)
    perm[list(RIGHT_CHAIN)] = LEFT_CHAIN
    perm[list(LEFT_CHAIN)] = RIGHT_CHAIN
    return perm


def rest_joints(offsets: np.ndarray | None = None, pelvis_height: float = REST_PELVIS_HEIGHT) -> np.ndarray:
    """Axis-aligned rest pose [22,3] in metres built from per-bone offset vectors (default: HumanML3D's)."""
    if offsets is None:
        offsets = RAW_OFFSETS * BONE_LENGTHS[:, None]
    joints = np.zeros((22, 3))
    joints[0] = (0.0, pelvis_height, 0.0)
    for j in range(1, 22):
        joints[j] = joints[SMPL22_PARENTS[j]] + offsets[j]
    return joints


def rest_joints24(pelvis_height: float = REST_PELVIS_HEIGHT) -> np.ndarray:
    """SMPL-topology rest pose [24,3]: the 22 body joints plus hands below the wrists."""
    body = rest_joints(pelvis_height=pelvis_height)
    hands = body[[20, 21]] + np.array([0.0, -HAND_LENGTH, 0.0])
    return np.concatenate([body, hands], axis=0)


def bone_offsets(joints: np.ndarray, parents: tuple[int, ...] = SMPL22_PARENTS) -> np.ndarray:
    """Per-joint offset from the parent ([..., J, 3]); the root keeps its position."""
    offsets = joints.copy()
    for j, p in enumerate(parents):
        if p >= 0:
            offsets[..., j, :] = joints[..., j, :] - joints[..., p, :]
    return offsets
