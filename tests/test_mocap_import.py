"""`load_motion`: units, axes, 20 fps resampling and T-pose removal on synthetic BVHs, then one clip per real source."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from safemotion.data.bvh import bvh_from_joints, read_bvh, write_bvh
from safemotion.data.joint_maps import apply_joint_map
from safemotion.data.mocap_import import (
    TARGET_FPS,
    MocapClip,
    add_root_offset_to_channels,
    leading_tpose_frames,
    load_motion,
    normalize_clip,
)
from safemotion.motion import features, rotations as rot, skeleton

# --- synthetic clips (no shared data needed) --------------------------------------------------------------------------


def walking_joints(frames: int, fps: float) -> np.ndarray:
    """SMPL-22 rest pose walking toward +Z at 1.2 m/s with swinging legs and arms (metres)."""
    t = np.arange(frames) / fps
    rest = skeleton.rest_joints()
    joints = np.repeat(rest[None], frames, axis=0)
    swing = 0.5 * np.sin(2 * np.pi * t)
    for chain, sign in (((1, 4, 7, 10), 1), ((2, 5, 8, 11), -1), ((13, 16, 18, 20), -1), ((14, 17, 19, 21), 1)):
        pivot = rest[chain[0]]
        turn = rot.axis_angle_to_matrix(np.stack([sign * swing, 0 * t, 0 * t], axis=-1))  # about x
        joints[:, list(chain[1:])] = pivot + (rest[list(chain[1:])] - pivot) @ np.swapaxes(turn, -1, -2)
    joints[..., 2] += 1.2 * t[:, None]
    return joints


def write_clip(path: Path, joints: np.ndarray, fps: float, unit: float = 1.0) -> Path:
    bvh = bvh_from_joints(joints / unit, skeleton.SMPL22_PARENTS, skeleton.SMPL22_NAMES, fps, joint_translations=True)
    write_bvh(bvh, path)
    return path


@pytest.mark.parametrize(("unit", "fps"), [(0.01, 60), (0.0254, 30), (1.0, 20)])
def test_units_detected_and_resampled_to_20fps(tmp_path, unit, fps):
    joints = walking_joints(2 * fps + 1, fps)
    clip = load_motion(write_clip(tmp_path / "walk.bvh", joints, fps, unit))
    assert isinstance(clip, MocapClip) and clip.name == "walk" and clip.source_fps == fps
    assert clip.joints.dtype == np.float32 and clip.joints.shape == (41, 22, 3)
    # Frames on both grids (every fps/gcd source frame) match the source exactly; translation channels make it exact.
    step = {60: 3, 30: 3, 20: 1}[fps]
    out_step = {60: 1, 30: 2, 20: 1}[fps]
    assert np.abs(clip.joints[::out_step] - joints[::step]).max() < 1e-5


def test_explicit_unit_scale_and_z_up(tmp_path):
    joints = walking_joints(21, 20)
    z_up = joints @ np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]).T  # Y-up (x, y, z) -> Z-up (x, -z, y)
    path = write_clip(tmp_path / "zup.bvh", z_up, 20, unit=0.01)
    clip = load_motion(path, unit_scale=0.01, up_axis="Z")
    assert np.abs(clip.joints - joints).max() < 1e-5
    half = load_motion(path, preset="smpl", unit_scale=0.005, up_axis="z")
    assert np.abs(half.joints - joints / 2).max() < 1e-5
    with pytest.raises(ValueError, match="up_axis must be one of"):
        load_motion(path, up_axis="X")


def tpose_frame(frame: np.ndarray) -> np.ndarray:
    """The frame with both arms straight out sideways from the collars."""
    out = frame.copy()
    for chain, sign in (((13, 16, 18, 20), 1.0), ((14, 17, 19, 21), -1.0)):
        for parent, child in zip(chain[:-1], chain[1:]):
            length = np.linalg.norm(frame[child] - frame[parent])
            out[child] = out[parent] + (sign * length, 0.0, 0.0)
    return out


def test_leading_tpose_frame_is_dropped(tmp_path):
    joints = walking_joints(121, 60)
    with_tpose = np.concatenate([tpose_frame(joints[0])[None], joints])
    assert leading_tpose_frames(with_tpose, max_frames=60) == 1
    clip = load_motion(write_clip(tmp_path / "tpose.bvh", with_tpose, 60, unit=0.01))
    assert clip.joints.shape[0] == 41
    assert np.abs(clip.joints - joints[::3]).max() < 1e-5


def test_tpose_hold_then_jump_is_dropped_but_a_steady_tpose_is_kept():
    joints = walking_joints(121, 60)
    held = joints.copy()
    held[:10] = tpose_frame(joints[0])
    assert leading_tpose_frames(held, max_frames=60) == 10
    assert leading_tpose_frames(held, max_frames=5) == 0
    steady = np.stack([tpose_frame(f) for f in joints])  # arms out for the whole clip: that is the motion
    assert leading_tpose_frames(steady, max_frames=60) == 0
    assert leading_tpose_frames(joints, max_frames=60) == 0


def deepmimic_frame(dt: float, root: tuple[float, float, float]) -> list[float]:
    """One humanoid3d frame: root position, every joint at its identity rotation, straight knees and elbows."""
    identity = [1.0, 0.0, 0.0, 0.0]
    # chest, neck, r_hip, r_knee, r_ankle, r_shoulder, r_elbow, l_hip, l_knee, l_ankle, l_shoulder, l_elbow
    joints = identity * 3 + [0.0] + identity * 2 + [0.0] + identity + [0.0] + identity * 2 + [0.0]
    return [dt, *root, *identity, *joints]


def test_deepmimic_rest_pose_walking_forward(tmp_path):
    # The humanoid faces +x in its own frame; gliding 1 m/s along +x over 1 s (uneven steps) must come out along +Z.
    times = [0.0, 0.25, 0.3, 0.5, 0.75, 1.0]
    frames = [deepmimic_frame(b - a, (a, 0.9, 0.0)) for a, b in zip(times[:-1], times[1:])]
    frames.append(deepmimic_frame(0.0, (1.0, 0.9, 0.0)))
    path = tmp_path / "glide.txt"
    path.write_text(json.dumps({"Loop": "none", "Frames": frames}))
    clip = load_motion(path)
    assert clip.joints.shape == (21, 22, 3) and clip.source_fps == 4.0
    assert np.allclose(clip.joints[:, 0], np.stack([np.zeros(21), np.full(21, 0.9), np.arange(21) / 20], axis=-1))
    first = clip.joints[0]
    assert np.allclose(first[1] - first[0], (0.084887, 0.0, 0.0), atol=1e-6)  # left hip at +x
    assert np.isclose(first[4, 1], 0.9 - 0.421546) and np.isclose(first[7, 1], 0.9 - 0.421546 - 0.40987)
    assert np.allclose(first[10] - first[7], (0.0, 0.0, 0.13))  # toes ahead of the ankle
    assert np.allclose(first[15] - first[12], (0.0, 0.1, 0.0))  # head above the neck
    assert first[16, 0] > 0.18 and first[20, 1] < first[16, 1] - 0.5  # left arm hangs on the left


def test_deepmimic_bad_frames(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(json.dumps({"Frames": [deepmimic_frame(0.1, (0, 1, 0)), [0.1, 0.0, 1.0]]}))
    with pytest.raises(ValueError, match="bad.txt: frame 1 has 3 values, expected 44"):
        load_motion(path)
    path.write_text('{"Frames": [1, 2,')
    with pytest.raises(ValueError, match="bad.txt:1: not valid JSON"):
        load_motion(path)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such mocap file"):
        load_motion(tmp_path / "missing.bvh")
    (tmp_path / "clip.c3d").write_bytes(b"\0")
    with pytest.raises(ValueError, match="unsupported mocap file type '.c3d'"):
        load_motion(tmp_path / "clip.c3d")


def test_normalize_clip_is_humanml3d_canonicalisation():
    joints = walking_joints(21, 20) + np.array([3.0, 0.2, -1.0])
    assert np.array_equal(normalize_clip(joints), features.canonicalize(joints))


# --- real clips from ../shared (skipped when absent) ----------------------------------------------------------------


def extract(archive: Path, wanted: set[str], dest: Path) -> dict[str, Path]:
    """Stream through a .tar.xz and write just the members whose file names are in `wanted`."""
    found: dict[str, Path] = {}
    with tarfile.open(archive, "r|xz") as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name in wanted:
                target = dest / name
                with tar.extractfile(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                found[name] = target
                if len(found) == len(wanted):
                    break
    missing = wanted - set(found)
    if missing:
        pytest.skip(f"{archive} lacks {sorted(missing)}")
    return found


@pytest.fixture(scope="module")
def bandai_walk(shared_dir, tmp_path_factory) -> Path:
    name = "dataset-1_walk_normal_001.bvh"
    return extract(shared_dir / "data/bandai/dataset-1.tar.xz", {name}, tmp_path_factory.mktemp("bandai"))[name]


@pytest.fixture(scope="module")
def iclone(shared_dir, tmp_path_factory) -> dict[str, Path]:
    return extract(shared_dir / "data/cmu/iclone_bvh.tar.xz", {"007_03.bvh", "002_01.bvh"},
                   tmp_path_factory.mktemp("iclone"))


def expected_frames(source_frames: int, source_fps: float) -> int:
    return int(np.floor((source_frames - 1) / source_fps * TARGET_FPS + 1e-6)) + 1


def assert_walks_forward(joints: np.ndarray, metres: float) -> None:
    """After HumanML3D canonicalisation the walk starts facing +Z, left side at +x, and travels along +Z."""
    canonical = normalize_clip(joints)
    assert canonical[0, 1, 0] > canonical[0, 2, 0] and canonical[0, 16, 0] > canonical[0, 17, 0]
    travel = canonical[-1, 0] - canonical[0, 0]
    assert travel[2] > metres and abs(travel[0]) < 0.3 * travel[2]


def test_bandai_walk(bandai_walk):
    raw = read_bvh(bandai_walk)
    clip = load_motion(bandai_walk)
    assert clip.source_fps == 30 and len(clip.joints) == expected_frames(raw.num_frames, 30) == 130
    assert 0.8 < np.median(clip.joints[:, 0, 1]) < 1.1
    head_above_floor = np.median(clip.joints[:, 15, 1]) - clip.joints[..., 1].min()
    assert 1.25 < head_above_floor < 1.5  # README: head joint at about 137 cm
    # As stored: Y-up, walking toward +Z with the left side at +x.
    assert clip.joints[-1, 0, 2] - clip.joints[0, 0, 2] > 5.0 and clip.joints[0, 1, 0] > clip.joints[0, 2, 0]
    assert_walks_forward(clip.joints, 5.0)


def test_iclone_tpose_clip(iclone):
    raw = read_bvh(iclone["007_03.bvh"])
    source = apply_joint_map(add_root_offset_to_channels(raw).world_positions(0.01), raw.names, "cc_base")
    assert leading_tpose_frames(source, max_frames=60) == 1
    clip = load_motion(iclone["007_03.bvh"])
    assert clip.source_fps == 60 and len(clip.joints) == expected_frames(raw.num_frames - 1, 60) == 69
    assert np.all(clip.joints[0, 20:22, 1] < clip.joints[0, 16:18, 1] - 0.3)  # hands hang below the shoulders
    # Root channels are relative to the 105 cm OFFSET: the feet stay on the floor, not a metre below it.
    assert 0.8 < np.median(clip.joints[:, 0, 1]) < 1.1
    assert 0.0 < clip.joints[:, 7:9, 1].min() < 0.15
    assert_walks_forward(clip.joints, 2.0)


def test_iclone_bone_root_clip(iclone):
    raw = read_bvh(iclone["002_01.bvh"])
    assert raw.names[0] == "RL_BoneRoot" and raw.names[1] == "CC_Base_Hip"
    clip = load_motion(iclone["002_01.bvh"])
    assert len(clip.joints) == expected_frames(raw.num_frames, 60)  # no T-pose
    pelvis = clip.joints[:, 0, 1]
    assert 1.0 < pelvis.mean() < 1.1 and pelvis.std() < 1e-3  # README: constant pelvis height in these files
    assert 0.0 < clip.joints[:, 7:9, 1].min() < 0.15
    assert_walks_forward(clip.joints, 2.0)


def test_deepmimic_walk(shared_dir, tmp_path):
    path = shared_dir / "data/deepmimic/humanoid3d_walk.txt"
    frames = json.loads(path.read_text())["Frames"]
    duration = sum(f[0] for f in frames)
    clip = load_motion(path)
    assert clip.source_fps == 30
    assert len(clip.joints) == int(np.floor(duration * TARGET_FPS + 1e-6)) + 1 == 26
    assert 0.8 < clip.joints[:, 0, 1].mean() < 1.1
    # Rotated to HumanML3D's frame already: left at +x, walking toward +Z.
    assert clip.joints[0, 1, 0] > clip.joints[0, 2, 0]
    assert clip.joints[-1, 0, 2] - clip.joints[0, 0, 2] > 1.0
    assert_walks_forward(clip.joints, 1.0)
    # Without humanoid.urdf beside it the shipped offsets give the same skeleton.
    alone = tmp_path / path.name
    shutil.copy(path, alone)
    assert np.abs(load_motion(alone).joints - clip.joints).max() < 1e-6
    with pytest.raises(ValueError, match="DeepMimic and ASE clips take no preset"):
        load_motion(path, preset="mixamo")


def test_deepmimic_uneven_frame_times(shared_dir):
    path = shared_dir / "data/deepmimic/humanoid3d_roll.txt"
    steps = [f[0] for f in json.loads(path.read_text())["Frames"]][:-1]
    assert len(set(np.round(steps, 4))) == 2  # README: one 0.033 s step among 1/60 s steps
    clip = load_motion(path)
    assert clip.source_fps == 60 and len(clip.joints) == int(np.floor(sum(steps) * 20 + 1e-6)) + 1
