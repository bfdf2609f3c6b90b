"""DeepMimic humanoid clips (pybullet `humanoid3d_*.txt`) as SMPL-22 joints in metres, resampled by time.

File format (shared/data/README.md §7): JSON {"Loop": ..., "Frames": [[dt, root_pos(3), root_quat(4), chest q(4),
neck q(4), r_hip q(4), r_knee, r_ankle q(4), r_shoulder q(4), r_elbow, l_hip q(4), l_knee, l_ankle q(4),
l_shoulder q(4), l_elbow], ...]} with quaternions (w, x, y, z) local to the parent joint, knee/elbow angles (radians)
about the local z axis, and `dt` the time to the next frame (0 on the last). The character is Y-up, faces +x with its
right side at +z; the output is rotated -90 degrees about Y so it faces +Z with the left side at +x (HumanML3D).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from safemotion.motion import rotations as rot

URDF_SCALE = 0.25  # pybullet loads humanoid.urdf with globalScaling 0.25; the motion files are already in metres.
FRAME_SIZE = 44

# Joints of the humanoid in FK order: (name, parent, number of values in a frame; 0 = fixed, 1 = angle about z).
_JOINTS: tuple[tuple[str, str | None, int], ...] = (
    ("root", None, 4),
    ("chest", "root", 4),
    ("neck", "chest", 4),
    ("right_hip", "root", 4),
    ("right_knee", "right_hip", 1),
    ("right_ankle", "right_knee", 4),
    ("right_shoulder", "chest", 4),
    ("right_elbow", "right_shoulder", 1),
    ("left_hip", "root", 4),
    ("left_knee", "left_hip", 1),
    ("left_ankle", "left_knee", 4),
    ("left_shoulder", "chest", 4),
    ("left_elbow", "left_shoulder", 1),
    ("right_wrist", "right_elbow", 0),
    ("left_wrist", "left_elbow", 0),
)
_INDEX = {name: i for i, (name, _, _) in enumerate(_JOINTS)}
HUMANOID_JOINTS = tuple(name for name, _, _ in _JOINTS)

# Joint origins of pybullet_data/humanoid/humanoid.urdf times URDF_SCALE (metres, parent frame, facing +x, right +z).
DEFAULT_OFFSETS: dict[str, tuple[float, float, float]] = {
    "root": (0.0, 0.0, 0.0),
    "chest": (0.0, 0.236151, 0.0),
    "neck": (0.0, 0.223894, 0.0),
    "right_hip": (0.0, 0.0, 0.084887),
    "right_knee": (0.0, -0.421546, 0.0),
    "right_ankle": (0.0, -0.40987, 0.0),
    "right_shoulder": (-0.02405, 0.2435, 0.18311),
    "right_elbow": (0.0, -0.274788, 0.0),
    "right_wrist": (0.0, -0.258947, 0.0),
    "left_hip": (0.0, 0.0, -0.084887),
    "left_knee": (0.0, -0.421546, 0.0),
    "left_ankle": (0.0, -0.40987, 0.0),
    "left_shoulder": (-0.02405, 0.2435, -0.18311),
    "left_elbow": (0.0, -0.274788, 0.0),
    "left_wrist": (0.0, -0.258947, 0.0),
}

# SMPL-22 joints the humanoid lacks (README §10): toes ahead of the ankle and a head above the neck, in their frames.
FOOT_OFFSET = np.array([0.13, 0.0, 0.0])
HEAD_OFFSET = np.array([0.0, 0.1, 0.0])

# Facing +x / right +z  ->  facing +Z / left +x: rotate -90 degrees about Y, (x, y, z) -> (-z, y, x).
_TO_HUMANML3D = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def read_urdf_offsets(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Joint origins (metres, scaled by URDF_SCALE) of a DeepMimic humanoid.urdf, keyed by joint name."""
    path = Path(path)
    # pybullet's dumped urdf ends with a NUL byte, which XML parsers reject.
    text = path.read_bytes().rstrip(b"\x00\r\n ")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise ValueError(f"{path}:{err.position[0]}: not a valid URDF file ({err})") from None
    offsets = {"root": np.zeros(3)}
    for joint in root.iter("joint"):
        name, origin = joint.get("name"), joint.find("origin")
        if name not in _INDEX or origin is None:
            continue
        rpy = np.array([float(v) for v in origin.get("rpy", "0 0 0").split()])
        if np.abs(rpy).max() > 1e-9:
            raise ValueError(f"{path}: joint {name} has a rotated origin (rpy {rpy}); only translations are supported")
        offsets[name] = np.array([float(v) for v in origin.get("xyz").split()]) * URDF_SCALE
    missing = [name for name, _, _ in _JOINTS if name not in offsets]
    if missing:
        raise ValueError(f"{path}: URDF lacks the humanoid joints {missing}")
    return offsets


def _read_frames(path: Path) -> np.ndarray:
    """The validated frame table [N, 44] of a DeepMimic motion file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    frames = data.get("Frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'Frames' list (DeepMimic motion format)")
    for k, frame in enumerate(frames):
        if not isinstance(frame, list) or len(frame) != FRAME_SIZE:
            size = len(frame) if isinstance(frame, list) else type(frame).__name__
            raise ValueError(f"{path}: frame {k} has {size} values, expected {FRAME_SIZE} (humanoid3d layout)")
    try:
        table = np.array(frames, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: every frame value must be a number") from None
    if not np.isfinite(table).all():
        raise ValueError(f"{path}: frame {int(np.argwhere(~np.isfinite(table))[0, 0])} has a non-finite value")
    if (table[:-1, 0] < 0).any():
        raise ValueError(f"{path}: negative frame duration (dt) in frame {int(np.argmax(table[:-1, 0] < 0))}")
    return table


def _split(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Root positions [N, 3] and local joint quaternions [N, len(_JOINTS), 4] of a frame table."""
    quats = np.zeros((len(table), len(_JOINTS), 4))
    quats[..., 0] = 1.0
    column = 4
    for j, (_, _, size) in enumerate(_JOINTS):
        if size == 4:
            quats[:, j] = rot.qnormalize(table[:, column : column + 4])
        elif size == 1:
            half = table[:, column] / 2  # 1-DoF joint: rotation about local z
            quats[:, j, 0], quats[:, j, 3] = np.cos(half), np.sin(half)
        column += size
    assert column == FRAME_SIZE
    return table[:, 1:4], quats


def _resample(times: np.ndarray, root: np.ndarray, quats: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Root positions (lerp) and joint rotations (slerp) at t = k / fps over the clip's duration."""
    count = int(np.floor(times[-1] * fps + 1e-6)) + 1
    target = np.arange(count) / fps
    i1 = np.clip(np.searchsorted(times, target, side="right"), 1, len(times) - 1)
    i0 = i1 - 1
    span = times[i1] - times[i0]
    alpha = np.clip(np.where(span > 0, (target - times[i0]) / np.where(span > 0, span, 1.0), 0.0), 0.0, 1.0)
    root = root[i0] + alpha[:, None] * (root[i1] - root[i0])
    return root, rot.qslerp(quats[i0], quats[i1], alpha[:, None])


def _forward_kinematics(root: np.ndarray, quats: np.ndarray, offsets: dict[str, np.ndarray]) -> np.ndarray:
    """SMPL-22 joints [T, 22, 3] in the humanoid's frame (facing +x) from root positions and local rotations."""
    world_q = np.empty_like(quats)
    pos = np.empty(quats.shape[:-1] + (3,))
    for j, (name, parent, _) in enumerate(_JOINTS):
        if parent is None:
            world_q[:, j], pos[:, j] = quats[:, j], root
        else:
            p = _INDEX[parent]
            world_q[:, j] = rot.qmul(world_q[:, p], quats[:, j])
            pos[:, j] = pos[:, p] + rot.qrot(world_q[:, p], np.broadcast_to(offsets[name], root.shape))

    def at(name: str) -> np.ndarray:
        return pos[:, _INDEX[name]]

    def ahead(name: str, offset: np.ndarray) -> np.ndarray:
        return at(name) + rot.qrot(world_q[:, _INDEX[name]], np.broadcast_to(offset, root.shape))

    pelvis, chest = at("root"), at("chest")
    smpl = [
        pelvis, at("left_hip"), at("right_hip"), pelvis + (chest - pelvis) / 3,
        at("left_knee"), at("right_knee"), pelvis + 2 * (chest - pelvis) / 3,
        at("left_ankle"), at("right_ankle"), chest,
        ahead("left_ankle", FOOT_OFFSET), ahead("right_ankle", FOOT_OFFSET), at("neck"),
        (chest + at("left_shoulder")) / 2, (chest + at("right_shoulder")) / 2, ahead("neck", HEAD_OFFSET),
        at("left_shoulder"), at("right_shoulder"), at("left_elbow"), at("right_elbow"),
        at("left_wrist"), at("right_wrist"),
    ]
    return np.stack(smpl, axis=1)


def humanoid_joints(
    times: np.ndarray, root: np.ndarray, quats: np.ndarray, offsets: dict[str, np.ndarray], fps: float
) -> np.ndarray:
    """SMPL-22 joints [T, 22, 3] (HumanML3D axes) at `fps` from the humanoid's samples in its own frame.

    times [N] seconds, root [N, 3] positions and quats [N, len(HUMANOID_JOINTS), 4] local rotations (w, x, y, z),
    all in the DeepMimic frame (Y-up, facing +x, right +z); rotations are slerped, the root lerped.
    """
    if len(times) > 1:
        root, quats = _resample(times, root, quats, fps)
    return _forward_kinematics(root, quats, offsets) @ _TO_HUMANML3D.T


def load_deepmimic(
    path: str | os.PathLike, urdf_path: str | os.PathLike | None = None, fps: float = 20.0
) -> tuple[np.ndarray, float]:
    """SMPL-22 joints [T, 22, 3] (metres, Y-up, facing +Z, left +x) at `fps`, and the clip's source frame rate.

    Bone offsets come from `urdf_path`, else from a humanoid.urdf next to the clip, else from DEFAULT_OFFSETS.
    """
    path = Path(path)
    if urdf_path is None and (path.parent / "humanoid.urdf").is_file():
        urdf_path = path.parent / "humanoid.urdf"
    if urdf_path is None:
        offsets = {name: np.array(v) for name, v in DEFAULT_OFFSETS.items()}
    else:
        offsets = read_urdf_offsets(urdf_path)
    table = _read_frames(path)
    steps = table[:-1, 0]
    times = np.concatenate([[0.0], np.cumsum(steps)])
    root, quats = _split(table)
    source_fps = 1.0 / float(np.median(steps[steps > 0])) if (steps > 0).any() else fps
    if abs(source_fps - round(source_fps)) < 0.01:  # dt is stored rounded (0.033332 s)
        source_fps = float(round(source_fps))
    return humanoid_joints(times, root, quats, offsets, fps), source_fps
