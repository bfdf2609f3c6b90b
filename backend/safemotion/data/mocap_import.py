"""One entry point for mocap clips: BVH, DeepMimic text and FBX files -> SMPL-22 joints in metres, Y-up, at 20 fps.

`load_motion` converts units and axes, resamples by time and drops a leading T-pose frame, but does not put the clip
on the floor or turn it to face +Z: the dataset builder cuts windows first and then calls `normalize_clip` on each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from safemotion.data.ase_sword_shield import load_ase_motion
from safemotion.data.bvh import POSITION_CHANNELS, Bvh, read_bvh
from safemotion.data.deepmimic import load_deepmimic
from safemotion.data.fbx_import import load_fbx_joints
from safemotion.data.joint_maps import apply_joint_map, detect_preset
from safemotion.motion import features, skeleton

TARGET_FPS = 20.0

# Length units seen in mocap files, in metres. cgspeed's CMU BVH conversion uses 1/0.45 inch.
KNOWN_UNITS: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001, "inch": 0.0254, "cgspeed": 0.0254 / 0.45}

# Pose-independent body size: both leg bones plus the spine-to-head chain (1.475 m on HumanML3D's skeleton).
_LEG_BONES = ((1, 4), (4, 7), (2, 5), (5, 8))
_SPINE_BONES = ((0, 3), (3, 6), (6, 9), (9, 12), (12, 15))
REFERENCE_BODY_SIZE = float(
    skeleton.BONE_LENGTHS[[4, 7, 5, 8]].sum() / 2 + skeleton.BONE_LENGTHS[[3, 6, 9, 12, 15]].sum()
)

# Leading T-pose: every arm bone within this angle of horizontal and the hands this far apart relative to the arms'
# length, held for at most TPOSE_MAX_HOLD_S (iClone 007_03..12 hold it for frame 0 only, 003_02 for 25 frames), then
# left by an upper-arm swing above TPOSE_MIN_JUMP_DEG in one frame that is TPOSE_JUMP_RATIO times the next swing.
TPOSE_MAX_ARM_TILT_DEG = 20.0
TPOSE_MIN_SPAN_RATIO = 0.8
TPOSE_MAX_HOLD_S = 1.0
TPOSE_MIN_JUMP_DEG = 30.0
TPOSE_JUMP_RATIO = 3.0

_UP_AXES = {"Y": np.eye(3), "Z": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])}


@dataclass
class MocapClip:
    """SMPL-22 joints [T, 22, 3] float32 in metres, Y-up, at 20 fps, not floor- or facing-normalised."""

    joints: np.ndarray
    name: str
    source_fps: float


def body_size(joints: np.ndarray) -> float:
    """Leg plus spine-to-head bone lengths of one SMPL-22 frame [22, 3] (about 1.5 m for an adult)."""
    legs = sum(np.linalg.norm(joints[a] - joints[b]) for a, b in _LEG_BONES) / 2
    return float(legs + sum(np.linalg.norm(joints[a] - joints[b]) for a, b in _SPINE_BONES))


def detect_unit_scale(joints: np.ndarray) -> float:
    """Metres per file unit (one of KNOWN_UNITS) that makes frame 0 of joints [T, 22, 3] most adult-sized."""
    size = body_size(np.asarray(joints)[0])
    if not size > 0:
        raise ValueError("cannot detect the length unit: the skeleton has zero size in frame 0; pass unit_scale")
    return min(KNOWN_UNITS.values(), key=lambda unit: abs(np.log(size * unit / REFERENCE_BODY_SIZE)))


def _angle_deg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    cos = (u * v).sum(-1) / np.maximum(np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _tpose_frames(joints: np.ndarray) -> np.ndarray:
    """Per frame of joints [T, 22, 3]: arms straight out sideways (every arm bone near horizontal, hands far apart)."""
    shoulders, elbows, wrists = joints[:, [16, 17]], joints[:, [18, 19]], joints[:, [20, 21]]
    segments = np.concatenate([elbows - shoulders, wrists - elbows], axis=1)
    lengths = np.linalg.norm(segments, axis=-1)
    tilt = np.degrees(np.arcsin(np.abs(segments[..., 1]) / np.maximum(lengths, 1e-12)))
    span = np.linalg.norm(wrists[:, 0] - wrists[:, 1], axis=-1)
    return (tilt.max(axis=1) < TPOSE_MAX_ARM_TILT_DEG) & (span > TPOSE_MIN_SPAN_RATIO * lengths.sum(axis=1))


def leading_tpose_frames(joints: np.ndarray, max_frames: int) -> int:
    """How many leading frames of Y-up joints [T, 22, 3] hold a T-pose that the motion leaves abruptly (0 if none).

    The hold may last up to `max_frames`; it must end with an upper-arm swing above TPOSE_MIN_JUMP_DEG in one frame,
    several times larger than the next frame's swing (a real arm movement does not stop dead).
    """
    joints = np.asarray(joints, dtype=np.float64)
    if len(joints) < 3:
        return 0
    upper = joints[:, [18, 19]] - joints[:, [16, 17]]
    swing = _angle_deg(upper[:-1], upper[1:]).mean(axis=1)
    jumps = np.flatnonzero(swing[: min(max_frames, len(swing) - 1)] > TPOSE_MIN_JUMP_DEG)
    if not jumps.size:
        return 0
    last = int(jumps[0])
    held = _tpose_frames(joints[: last + 1]).all()
    return last + 1 if held and swing[last] > TPOSE_JUMP_RATIO * swing[last + 1] else 0


def add_root_offset_to_channels(bvh: Bvh) -> Bvh:
    """The BVH with the root OFFSET added to its position channels (iClone writes them relative to the OFFSET)."""
    motion = bvh.motion.copy()
    for k, channel in enumerate(bvh.channels[0]):
        if channel in POSITION_CHANNELS:
            motion[:, bvh.columns(0).start + k] += bvh.offsets[0, POSITION_CHANNELS.index(channel)]
    return replace(bvh, motion=motion)


def _to_y_up(joints: np.ndarray, up_axis: str) -> np.ndarray:
    if up_axis.upper() not in _UP_AXES:
        raise ValueError(f"up_axis must be one of {sorted(_UP_AXES)}, got {up_axis!r}")
    return joints @ _UP_AXES[up_axis.upper()].T


def _crop(bvh: Bvh, seconds: tuple[float, float], path: Path) -> Bvh:
    """The source frames of `bvh` from seconds[0] to seconds[1] (inclusive, nearest frames)."""
    start, end = seconds
    duration = (bvh.num_frames - 1) * bvh.frame_time
    if not 0 <= start < end <= duration + 1e-6:
        raise ValueError(f"{path}: segment {start}-{end} s is outside the take (0-{duration:.2f} s)")
    first, last = round(start * bvh.fps), min(round(end * bvh.fps), bvh.num_frames - 1)
    return replace(bvh, motion=bvh.motion[first : last + 1])


def _load_bvh(
    path: Path, preset: str | None, unit_scale: float | None, up_axis: str, seconds: tuple[float, float] | None,
    extra_frames: str,
) -> MocapClip:
    bvh = read_bvh(path, extra_frames)
    if bvh.num_frames == 0:
        raise ValueError(f"{path}: the BVH file has no motion frames")
    if seconds is not None:
        bvh = _crop(bvh, seconds, path)
    preset = preset or detect_preset(bvh.names)
    if preset == "cc_base":
        bvh = add_root_offset_to_channels(bvh)
    joints = _to_y_up(apply_joint_map(bvh.world_positions(), bvh.names, preset), up_axis)
    scale = unit_scale if unit_scale is not None else detect_unit_scale(joints)
    skip = leading_tpose_frames(joints, max_frames=round(bvh.fps * TPOSE_MAX_HOLD_S))
    if skip:
        bvh = replace(bvh, motion=bvh.motion[skip:])
    source_fps = bvh.fps
    if source_fps != TARGET_FPS:
        bvh = bvh.resample(TARGET_FPS)
    joints = _to_y_up(apply_joint_map(bvh.world_positions(scale), bvh.names, preset), up_axis)
    return MocapClip(joints=joints.astype(np.float32), name=path.stem, source_fps=source_fps)


def _load_fbx(path: Path, preset: str | None, unit_scale: float | None) -> MocapClip:
    positions, names, source_fps = load_fbx_joints(path, fps=TARGET_FPS)
    joints = apply_joint_map(positions, names, preset or detect_preset(names))
    scale = unit_scale if unit_scale is not None else detect_unit_scale(joints)
    return MocapClip(joints=(joints * scale).astype(np.float32), name=path.stem, source_fps=source_fps)


def load_motion(
    path: str | os.PathLike, preset: str | None = None, unit_scale: float | None = None, up_axis: str = "Y",
    seconds: tuple[float, float] | None = None, extra_frames: str = "error",
) -> MocapClip:
    """Load a .bvh, .fbx, DeepMimic .txt/.json or ASE .npy clip as SMPL-22 joints in metres, Y-up, at 20 fps.

    preset: joint map for BVH/FBX skeletons (detected from joint names when None). unit_scale: metres per file unit
    (detected from body size when None). up_axis: "Y" or "Z", the up axis of a BVH file's world frame (FBX files
    declare theirs, which Blender's importer applies; DeepMimic and ASE clips have a fixed skeleton, unit and axes).
    seconds: (start, end) of a BVH take to keep, cut before resampling (a captioned segment). extra_frames: BVH frame
    lines beyond the declared count are an "error" or are ignored ("ignore").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mocap file")
    suffix = path.suffix.lower()
    if (seconds is not None or extra_frames != "error") and suffix != ".bvh":
        raise ValueError(f"{path}: seconds and extra_frames apply only to BVH files")
    if suffix == ".bvh":
        return _load_bvh(path, preset, unit_scale, up_axis, seconds, extra_frames)
    if suffix == ".fbx":
        if up_axis.upper() != "Y":
            raise ValueError(f"{path}: up_axis does not apply to FBX files (the importer reads their axis settings)")
        return _load_fbx(path, preset, unit_scale)
    if suffix in (".txt", ".json", ".npy"):
        if preset is not None or unit_scale is not None or up_axis.upper() != "Y":
            raise ValueError(f"{path}: DeepMimic and ASE clips take no preset, unit_scale or up_axis (their skeleton "
                             "is fixed)")
        load = load_ase_motion if suffix == ".npy" else load_deepmimic
        joints, source_fps = load(path, fps=TARGET_FPS)
        return MocapClip(joints=joints.astype(np.float32), name=path.stem, source_fps=source_fps)
    raise ValueError(
        f"{path}: unsupported mocap file type {suffix!r}; expected .bvh, .fbx, DeepMimic .txt/.json or ASE .npy"
    )


def normalize_clip(joints: np.ndarray) -> np.ndarray:
    """HumanML3D's floor, origin and facing normalisation (features.canonicalize) of joints [T, 22, 3]."""
    return features.canonicalize(joints)
