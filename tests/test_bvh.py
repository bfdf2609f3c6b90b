"""BVH reader/writer, forward kinematics, resampling and building from joint positions."""

from __future__ import annotations

import re

import numpy as np
import pytest

from safemotion.data.bvh import Bvh, BvhError, bvh_from_joints, bvh_from_smpl_joints, read_bvh, write_bvh
from safemotion.motion import rotations as rot
from safemotion.motion import skeleton


def forward_kinematics(local_quats: np.ndarray, root_pos: np.ndarray, offsets: np.ndarray, parents) -> np.ndarray:
    """Reference FK for the fixtures: joints [T, J, 3] from local quaternions [T, J, 4]."""
    world_q = np.empty_like(local_quats)
    pos = np.empty(local_quats.shape[:-1] + (3,))
    for j, p in enumerate(parents):
        if p < 0:
            world_q[:, j], pos[:, j] = local_quats[:, j], root_pos
        else:
            world_q[:, j] = rot.qmul(world_q[:, p], local_quats[:, j])
            pos[:, j] = pos[:, p] + rot.qrot(world_q[:, p], np.broadcast_to(offsets[j], root_pos.shape))
    return pos


def smpl_motion(frames: int = 40, seed: int = 0) -> np.ndarray:
    """A smooth, rigid-bone SMPL-22 motion (metres): sinusoidal joint rotations and a walking root."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None] / 20.0
    amplitude = rng.uniform(0.2, 0.9, (1, 22, 3))
    phase = rng.uniform(0, 2 * np.pi, (1, 22, 3))
    local = rot.axis_angle_to_quat(amplitude * np.sin(2 * np.pi * 0.7 * t + phase))
    root = np.stack([0.1 * np.sin(t[:, 0, 0]), 0.9 + 0.02 * np.cos(5 * t[:, 0, 0]), 1.2 * t[:, 0, 0]], axis=-1)
    offsets = skeleton.bone_offsets(skeleton.rest_joints())
    return forward_kinematics(local, root, offsets, skeleton.SMPL22_PARENTS)


def by_name(bvh: Bvh, positions: np.ndarray, names) -> np.ndarray:
    """Reorder [T, J, 3] positions of `bvh` (file order) into the order of `names`."""
    return positions[:, [bvh.names.index(n) for n in names]]


# --- round trips ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["ZYX", "ZXY", "XYZ", "YZX"])
def test_round_trip_recovers_rigid_joint_motion(tmp_path, order):
    joints = smpl_motion()
    bvh = bvh_from_joints(joints, skeleton.SMPL22_PARENTS, skeleton.SMPL22_NAMES, fps=20,
                          rest_pose=skeleton.rest_joints(), rotation_order=order)
    assert all(len(c) == (6 if j == 0 else 3) for j, c in enumerate(bvh.channels))
    path = tmp_path / "motion.bvh"
    write_bvh(bvh, path)
    back = read_bvh(path)
    assert back.names[0] == "pelvis" and back.names != list(skeleton.SMPL22_NAMES)  # written depth first
    assert back.fps == 20 and back.num_frames == len(joints)
    recovered = by_name(back, back.world_positions(), skeleton.SMPL22_NAMES)
    assert np.abs(recovered - joints).max() < 1e-5


def test_joint_translations_make_any_joint_motion_exact(tmp_path):
    rng = np.random.default_rng(1)
    joints = smpl_motion() + rng.normal(0, 0.02, (40, 22, 3))  # bones stretch: no rigid skeleton fits
    rigid = bvh_from_joints(joints, skeleton.SMPL22_PARENTS, skeleton.SMPL22_NAMES, fps=20)
    assert np.abs(rigid.world_positions() - joints).max() > 1e-3
    exact = bvh_from_joints(joints, skeleton.SMPL22_PARENTS, skeleton.SMPL22_NAMES, fps=20, joint_translations=True)
    assert all(len(c) == 6 for c in exact.channels)
    write_bvh(exact, tmp_path / "stretch.bvh")
    back = read_bvh(tmp_path / "stretch.bvh")
    assert np.abs(by_name(back, back.world_positions(), skeleton.SMPL22_NAMES) - joints).max() < 1e-5


def test_smpl_bvh_written_in_centimetres(tmp_path):
    joints = smpl_motion(frames=10)
    bvh = bvh_from_smpl_joints(joints).scaled(100.0)
    assert np.allclose(bvh.offsets[4], (0.0, -39.2, 0.0))  # left knee: HumanML3D rest direction, length in cm
    write_bvh(bvh, tmp_path / "smpl_cm.bvh")
    back = read_bvh(tmp_path / "smpl_cm.bvh")
    assert np.abs(by_name(back, back.world_positions(scale=0.01), skeleton.SMPL22_NAMES) - joints).max() < 1e-5


def test_rest_pose_is_the_zero_rotation_pose():
    joints = smpl_motion(frames=5)
    rest = skeleton.rest_joints()
    bvh = bvh_from_joints(joints, skeleton.SMPL22_PARENTS, skeleton.SMPL22_NAMES, fps=20, rest_pose=rest)
    zero = Bvh(names=bvh.names, parents=bvh.parents, offsets=bvh.offsets, channels=bvh.channels,
               frame_time=bvh.frame_time, motion=np.zeros((1, bvh.motion.shape[1])))
    pose = zero.world_positions()[0]
    assert np.abs((pose - pose[0]) - (rest - rest[0])).max() < 1e-9
    # Leaves carry an End Site half a bone beyond them.
    assert sorted(bvh.end_sites) == [10, 11, 15, 20, 21]


# --- hand-written files: channel orders, position channels, end sites, scale ----------------------------------------

CHAIN = """HIERARCHY
ROOT Root
{{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition {root_order}
  JOINT Mid
  {{
    OFFSET 5 5 5
    CHANNELS 6 Xposition Yposition Zposition {mid_order}
    JOINT Tip
    {{
      OFFSET 0 1 0
      CHANNELS 3 Zrotation Yrotation Xrotation
      End Site
      {{
        OFFSET 0 0 2
      }}
    }}
  }}
}}
MOTION
Frames: 1
Frame Time: 0.0333333
{frame}
"""


def write_chain(tmp_path, root_order: str, mid_order: str, frame: str):
    path = tmp_path / "chain.bvh"
    path.write_text(CHAIN.format(root_order=root_order, mid_order=mid_order, frame=frame))
    return path


@pytest.mark.parametrize(
    ("root_order", "expected_mid", "expected_tip"),
    [
        # R = Rz(90) @ Rx(90): Mid's translation (1,0,0) -> (0,1,0); Tip's offset (0,1,0) -> Rx: (0,0,1) -> (0,0,1).
        ("Zrotation Xrotation Yrotation", (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        # R = Rx(90) @ Rz(90): (1,0,0) -> Rz: (0,1,0) -> Rx: (0,0,1); (0,1,0) -> Rz: (-1,0,0) -> Rx: (-1,0,0).
        ("Xrotation Zrotation Yrotation", (0.0, 0.0, 1.0), (-1.0, 0.0, 0.0)),
        # R = Rz(90) @ Ry(90): (1,0,0) -> Ry: (0,0,-1) -> Rz: (0,0,-1); (0,1,0) -> Ry: (0,1,0) -> Rz: (-1,0,0).
        ("Zrotation Yrotation Xrotation", (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),
    ],
)
def test_channel_order_and_position_channels_replace_offset(tmp_path, root_order, expected_mid, expected_tip):
    # Root at (10, 0, 0) turned 90 degrees about its first two axes; Mid's position channels (1, 0, 0) replace its
    # OFFSET (5, 5, 5); Mid and Tip unrotated.
    frame = "10 0 0 90 90 0 1 0 0 0 0 0 0 0 0"
    bvh = read_bvh(write_chain(tmp_path, root_order, "Zrotation Xrotation Yrotation", frame))
    assert [len(c) for c in bvh.channels] == [6, 6, 3]
    pos = bvh.world_positions()[0]
    assert np.allclose(pos[0], (10, 0, 0))
    assert np.allclose(pos[1] - pos[0], expected_mid, atol=1e-9)
    assert np.allclose(pos[2] - pos[1], expected_tip, atol=1e-9)


def test_end_sites_and_scale(tmp_path):
    frame = "0 0 0 0 0 0 1 0 0 0 0 0 90 0 0"  # Tip rotated 90 degrees about Z
    bvh = read_bvh(write_chain(tmp_path, "Zrotation Xrotation Yrotation", "Yrotation Xrotation Zrotation", frame))
    assert list(bvh.end_sites) == [2] and np.allclose(bvh.end_sites[2], (0, 0, 2))
    with_ends = bvh.world_positions(end_sites=True)
    assert with_ends.shape == (1, 4, 3)
    assert np.allclose(with_ends[0, 3], with_ends[0, 2] + (0, 0, 2))  # about z: (0,0,2) is unchanged
    assert np.allclose(bvh.world_positions(scale=0.01), 0.01 * bvh.world_positions())
    write_bvh(bvh, tmp_path / "again.bvh")
    again = read_bvh(tmp_path / "again.bvh")
    assert again.channels == bvh.channels and list(again.end_sites) == [2]
    assert np.allclose(again.world_positions(end_sites=True), with_ends)


def test_rounded_frame_time_snaps_to_integer_fps():
    bvh = Bvh(names=["a"], parents=[-1], offsets=np.zeros((1, 3)), channels=[()], frame_time=0.016667,
              motion=np.zeros((3, 0)))
    assert bvh.fps == 60.0
    assert Bvh(names=["a"], parents=[-1], offsets=np.zeros((1, 3)), channels=[()], frame_time=0.045,
               motion=np.zeros((3, 0))).fps == pytest.approx(22.2222, abs=1e-4)


# --- resampling -------------------------------------------------------------------------------------------------------

AXIS = np.array([0.3, 0.8, -0.5]) / np.linalg.norm([0.3, 0.8, -0.5])
SPIN_DEG_PER_S = 360.0


def analytic_clip(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Root path and root rotation (constant spin about a tilted axis) at the given times."""
    root = np.stack([0.5 * seconds, 1.0 + 0.1 * seconds, -0.2 * seconds], axis=-1)
    return root, rot.axis_angle_to_matrix(np.radians(SPIN_DEG_PER_S) * seconds[:, None] * AXIS)


def spinning_bvh(fps: float, seconds: float = 2.0) -> Bvh:
    times = np.arange(int(round(seconds * fps)) + 1) / fps
    root, matrices = analytic_clip(times)
    motion = np.concatenate([root, rot.matrix_to_euler(matrices, "ZXY")], axis=1)
    return Bvh(names=["Root", "Arm"], parents=[-1, 0], offsets=np.array([[0, 0, 0], [0.0, 0.0, 1.0]]),
               channels=[("Xposition", "Yposition", "Zposition", "Zrotation", "Xrotation", "Yrotation"), ()],
               frame_time=1.0 / fps, motion=motion)


@pytest.mark.parametrize("source_fps", [30, 60])
def test_resample_to_20fps_follows_the_analytic_motion(source_fps):
    clip = spinning_bvh(source_fps)
    out = clip.resample(20)
    assert out.num_frames == 41 and out.fps == 20
    times = np.arange(41) / 20
    root, matrices = analytic_clip(times)
    expected_arm = root + matrices @ np.array([0.0, 0.0, 1.0])
    pos = out.world_positions()
    assert np.abs(pos[:, 0] - root).max() < 1e-9
    # Slerp reproduces a constant spin about a fixed axis exactly; lerping the Euler angles would not.
    assert np.abs(pos[:, 1] - expected_arm).max() < 1e-9
    euler_lerp = clip.motion[1:3].mean(axis=0)  # halfway between source frames 1 and 2 (30 fps) / 1 and 2 (60 fps)
    halfway = rot.euler_to_matrix(euler_lerp[3:], "ZXY") @ np.array([0.0, 0.0, 1.0])
    exact_halfway = analytic_clip(np.array([1.5 / source_fps]))[1][0] @ np.array([0.0, 0.0, 1.0])
    assert np.linalg.norm(halfway - exact_halfway) > 1e-4


def test_resample_keeps_frames_on_the_grid_exactly():
    clip = spinning_bvh(60, seconds=1.0)
    out = clip.resample(20)
    assert np.array_equal(out.motion, clip.motion[::3])


# --- malformed files --------------------------------------------------------------------------------------------------


def valid_text(tmp_path) -> str:
    joints = smpl_motion(frames=4)[:, :3]
    bvh = bvh_from_joints(joints, (-1, 0, 0), ("Hips", "LeftUpLeg", "RightUpLeg"), fps=30)
    write_bvh(bvh, tmp_path / "valid.bvh")
    return (tmp_path / "valid.bvh").read_text()


def assert_error_at(path, line: int, pattern: str) -> None:
    with pytest.raises(BvhError) as info:
        read_bvh(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert re.search(pattern, message), message


def test_malformed_missing_motion(tmp_path):
    text = valid_text(tmp_path)
    path = tmp_path / "no_motion.bvh"
    path.write_text(text[: text.index("MOTION")])
    assert_error_at(path, len(path.read_text().splitlines()), "no MOTION section")


def test_malformed_channel_count_mismatch(tmp_path):
    lines = valid_text(tmp_path).splitlines()
    channels_line = next(i for i, line in enumerate(lines) if "CHANNELS 3" in line)
    lines[channels_line] = lines[channels_line].replace("CHANNELS 3 Z", "CHANNELS 6 Xposition Yposition Zposition Z")
    path = tmp_path / "mismatch.bvh"
    path.write_text("\n".join(lines) + "\n")
    first_frame = lines.index("MOTION") + 4
    assert_error_at(path, first_frame, r"frame has 12 values but the CHANNELS declarations sum to 15")


def test_malformed_nan_value(tmp_path):
    lines = valid_text(tmp_path).splitlines()
    frame = lines.index("MOTION") + 5  # second frame (1-based line number)
    values = lines[frame - 1].split()
    values[7] = "nan"
    lines[frame - 1] = " ".join(values)
    path = tmp_path / "nan.bvh"
    path.write_text("\n".join(lines) + "\n")
    assert_error_at(path, frame, r"non-finite value 'nan' in column 8 \(joint LeftUpLeg\)")


def test_malformed_truncated_frame(tmp_path):
    text = valid_text(tmp_path)
    path = tmp_path / "truncated.bvh"
    path.write_text(text[: len(text) - 30])  # cut inside the last frame
    last = len(text.splitlines())
    assert_error_at(path, last, r"frame has \d+ values .*truncated frame")


def test_malformed_missing_frames_and_bad_header(tmp_path):
    lines = valid_text(tmp_path).splitlines()
    path = tmp_path / "short.bvh"
    path.write_text("\n".join(lines[:-2]) + "\n")
    assert_error_at(path, len(lines) - 2, r"declares 4 frames but only 2 follow")
    path.write_text("\n".join(lines).replace("OFFSET", "OFFSETS", 1))
    assert_error_at(path, 4, r"unexpected 'OFFSETS'")
    path.write_text("\n".join(lines).replace("Zrotation", "Qrotation", 1))
    assert_error_at(path, 5, r"unknown channel")
