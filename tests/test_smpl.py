"""SMPL kinematics: rest skeleton, forward kinematics, analytic IK round trips and twist plausibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from safemotion.motion import rotations as rot
from safemotion.motion import skeleton, smpl

REST = smpl.smpl_rest_joints()
X, Y, Z = np.eye(3)
# Rest hinge axes (T-pose): knees bend backwards about +x, the left elbow forwards about -y, the right about +y.
HINGES = {4: X, 5: X, 18: -Y, 19: Y}
# Joints whose world frame the joint positions determine completely (given hinge-only knees and elbows, bent >= 20°).
DETERMINED = [0, 1, 2, 4, 5, 9, 16, 17, 18, 19]
TWISTING = [1, 2, 3, 6, 7, 8, 12, 13, 14, 16, 17]  # joints given random rotations, twist included


def _mpjpe(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=-1).mean())


def _round_trip(joints: np.ndarray, rest: np.ndarray | None = None) -> tuple[smpl.SmplMotion, np.ndarray]:
    motion = smpl.joints_to_smpl(joints, rest_joints=rest)
    return motion, smpl.smpl_forward_kinematics(motion.pose, motion.transl, motion.rest_joints)[:, :22]


def _angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (radians) of the rotation a^T b for matrices [..., 3, 3]."""
    cos = (np.einsum("...ij,...ij->...", a, b) - 1) / 2
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _steps_deg(pose: np.ndarray) -> np.ndarray:
    """Frame-to-frame change (degrees) of every local rotation, [T-1, 24]."""
    local = rot.axis_angle_to_matrix(pose)
    return np.degrees(_angle_between(local[1:], local[:-1]))


def _random_poses(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random plausible poses: any root, twisting torso and limbs, hinge-only knees and elbows bent 25-115 degrees."""
    rng = np.random.default_rng(seed)
    pose = np.zeros((frames, 24, 3))
    root_axis = rng.normal(size=(frames, 3))
    pose[:, 0] = root_axis / np.linalg.norm(root_axis, axis=1, keepdims=True) * rng.uniform(0, np.pi, (frames, 1))
    axes = rng.normal(size=(frames, len(TWISTING), 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    pose[:, TWISTING] = axes * rng.uniform(0.0, 0.7, (frames, len(TWISTING), 1))
    for joint, axis in HINGES.items():
        pose[:, joint] = axis * rng.uniform(np.radians(25), np.radians(115), (frames, 1))
    transl = rng.uniform(-1, 1, (frames, 3))
    return pose, transl


def _walk(frames: int = 80, fps: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """A walking-like clip: gait cycle of 1 s, turning through 216 degrees (past a half turn), arms swinging."""
    t = np.arange(frames) / fps
    phase = 2 * np.pi * t
    pose = np.zeros((frames, 24, 3))
    yaw = np.linspace(0, 1.2 * np.pi, frames)
    pose[:, 0] = Y * (yaw + 0.1 * np.sin(phase))[:, None]
    pose[:, 3] = Y * (-0.06 * np.sin(phase))[:, None] + X * 0.05
    pose[:, 6] = Y * (-0.06 * np.sin(phase))[:, None]
    for hip, knee, shoulder, elbow, side in ((1, 4, 16, 18, 1.0), (2, 5, 17, 19, -1.0)):
        swing = side * np.sin(phase)
        pose[:, hip] = X * (-0.45 * swing)[:, None]
        # Knee bend sweeps 3-40 degrees, through the range where the limb plane fades in.
        pose[:, knee] = X * np.radians(3 + 37 * (0.5 + 0.5 * np.sin(phase * side + 1.0)))[:, None]
        arm_down = rot.matrix_to_axis_angle(
            rot.axis_angle_to_matrix(X * (0.4 * swing)[:, None]) @ rot.axis_angle_to_matrix(-side * Z * np.radians(80))
        )
        pose[:, shoulder] = arm_down
        pose[:, elbow] = HINGES[elbow] * np.radians(15 + 20 * (0.5 + 0.5 * swing))[:, None]
    speed = 1.3 / fps
    heading = np.stack([np.sin(yaw), np.zeros(frames), np.cos(yaw)], axis=1)
    transl = np.cumsum(heading * speed, axis=0) + Y * (0.02 * np.sin(2 * phase))[:, None]
    return pose, transl


# --- rest skeleton and forward kinematics -----------------------------------------------------------------------------


def test_rest_joints_are_a_t_pose_with_humanml3d_bone_lengths() -> None:
    assert REST.shape == (24, 3)
    lengths = np.linalg.norm(REST[1:] - REST[smpl.PARENTS[1:]], axis=1)
    np.testing.assert_allclose(lengths[:21], skeleton.BONE_LENGTHS[1:], atol=1e-12)
    np.testing.assert_allclose(lengths[21:], skeleton.HAND_LENGTH, atol=1e-12)
    assert REST[:, 1].min() == pytest.approx(0.0)  # lowest joint on the floor
    # Arms horizontal along +-x (left at +x), legs straight down, feet forward.
    for chain, sign in (((13, 16, 18, 20, 22), 1.0), ((14, 17, 19, 21, 23), -1.0)):
        arm = np.diff(REST[list(chain)], axis=0)
        np.testing.assert_allclose(arm[:, 1:], 0.0, atol=1e-12)
        assert np.all(sign * arm[:, 0] > 0)
    for hip, knee, ankle, foot in ((1, 4, 7, 10), (2, 5, 8, 11)):
        np.testing.assert_allclose(REST[[knee, ankle], 0], REST[hip, 0], atol=1e-12)
        assert REST[foot, 2] - REST[ankle, 2] > 0.1
    assert REST[15, 1] > REST[12, 1] > REST[9, 1] > REST[0, 1]
    np.testing.assert_allclose(REST[12, [0, 2]], REST[0, [0, 2]], atol=1e-12)  # upright: neck above the pelvis
    np.testing.assert_allclose(REST[1, 1:], REST[2, 1:], atol=1e-12)  # hips level, along x


def test_custom_bone_lengths_scale_the_skeleton() -> None:
    scaled = smpl.smpl_rest_joints(np.r_[skeleton.BONE_LENGTHS, 2 * [skeleton.HAND_LENGTH]] * 1.1)
    np.testing.assert_allclose(scaled, REST * 1.1, atol=1e-12)
    with pytest.raises(ValueError, match="22 or 24 positive bone lengths"):
        smpl.smpl_rest_joints(np.ones(5))


def test_forward_kinematics_zero_pose_is_rest_plus_translation() -> None:
    transl = np.array([[0.0, 0.0, 0.0], [0.5, -0.2, 1.0]])
    joints = smpl.smpl_forward_kinematics(np.zeros((2, 24, 3)), transl, REST)
    np.testing.assert_allclose(joints, REST[None] + transl[:, None], atol=1e-12)


def test_forward_kinematics_rotates_children_about_the_joint() -> None:
    pose = np.zeros((1, 24, 3))
    pose[0, 18] = -Y * np.pi / 2  # left elbow flexed 90 degrees: the forearm points forward
    joints = smpl.smpl_forward_kinematics(pose, np.zeros((1, 3)), REST)[0]
    forearm = REST[20, 0] - REST[18, 0]
    np.testing.assert_allclose(joints[20], REST[18] + Z * forearm, atol=1e-12)
    np.testing.assert_allclose(joints[:20], REST[:20], atol=1e-12)


def test_bad_shapes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"\[T, 22, 3\]"):
        smpl.joints_to_smpl(np.zeros((10, 24, 3)))
    with pytest.raises(ValueError, match="NaN"):
        smpl.joints_to_smpl(np.full((2, 22, 3), np.nan))
    with pytest.raises(ValueError, match="transl"):
        smpl.SmplMotion(pose=np.zeros((3, 24, 3)), transl=np.zeros((2, 3)), rest_joints=REST)
    with pytest.raises(ValueError, match="rest_joints"):
        smpl.smpl_forward_kinematics(np.zeros((1, 24, 3)), np.zeros((1, 3)), REST[:22])


# --- IK on synthetic motion -----------------------------------------------------------------------------------------


def test_clip_rest_joints_recovers_the_generating_skeleton() -> None:
    pose, transl = _random_poses(32, seed=1)
    pose[:, [3, 6, 9, 12]] = 0.0  # an upright torso: the clip's median posture is the rest pose's
    joints = smpl.smpl_forward_kinematics(pose, transl, REST)[:, :22]
    np.testing.assert_allclose(smpl.clip_rest_joints(joints), REST, atol=1e-9)


def test_clip_rest_joints_takes_the_torso_from_the_median_posture() -> None:
    pose, transl = _random_poses(41, seed=5)
    pose[:, [3, 6, 9, 12]] = 0.0
    pose[:, 6] = X * np.radians(np.linspace(0, 40, 41))[:, None]  # bending forward at spine2, 20 degrees in the median
    joints = smpl.smpl_forward_kinematics(pose, transl, REST)[:, :22]
    motion = smpl.joints_to_smpl(joints)
    # The median frame is the rest pose: spine2 bends -20..20 degrees about x around it, the rest of the torso stays.
    np.testing.assert_allclose(np.degrees(motion.pose[:, 6, 0]), np.linspace(-20, 20, 41), atol=0.5)
    assert np.abs(motion.pose[:, [3, 9]]).max() < np.radians(0.5)


def test_round_trip_random_poses_is_exact_and_recovers_determined_frames() -> None:
    pose, transl = _random_poses(200, seed=0)
    joints = smpl.smpl_forward_kinematics(pose, transl, REST)[:, :22]
    _, back = _round_trip(joints)  # on the rest pose measured from the clip
    assert _mpjpe(back, joints) < 1e-6
    motion, back = _round_trip(joints, REST)  # on the generating rest pose
    assert _mpjpe(back, joints) < 1e-6
    np.testing.assert_allclose(motion.transl, transl, atol=1e-9)
    # Pelvis and spine3 (three children), hips + knees and shoulders + elbows (limb plane): the world frame including
    # twist is the one that generated the motion.
    error = _angle_between(smpl.smpl_global_rotations(pose), smpl.smpl_global_rotations(motion.pose))
    assert error[:, DETERMINED].max() < 1e-6


def test_straight_hanging_arm_gets_a_pure_swing_without_twist() -> None:
    pose = np.zeros((1, 24, 3))
    pose[0, 16] = -Z * np.radians(85)
    pose[0, 17] = Z * np.radians(85)
    pose[0, 18] = -Y * np.radians(2)  # nearly straight: below the 5° where the limb plane starts to count
    joints = smpl.smpl_forward_kinematics(pose, np.zeros((1, 3)), REST)[:, :22]
    motion = smpl.joints_to_smpl(joints, rest_joints=REST)
    np.testing.assert_allclose(motion.pose[0, [16, 17]], pose[0, [16, 17]], atol=1e-9)
    np.testing.assert_allclose(motion.pose[0, 18], pose[0, 18], atol=1e-9)


def test_walking_clip_round_trip_is_exact_and_smooth() -> None:
    pose, transl = _walk()
    joints = smpl.smpl_forward_kinematics(pose, transl, REST)[:, :22]
    motion, back = _round_trip(joints)
    assert _mpjpe(back, joints) < 1e-6
    # No flips: no local rotation changes faster than the fastest joint of the generating motion.
    assert _steps_deg(motion.pose).max() <= _steps_deg(pose).max() + 1.0
    # The root turns past 180 degrees; its axis-angle vector stays continuous (no jump from +pi to -pi).
    assert np.linalg.norm(np.diff(motion.pose[:, 0], axis=0), axis=-1).max() < 0.2
    assert np.linalg.norm(motion.pose[-1, 0]) > np.pi
    # Hips move without twist and knees are hinges, so their frames are recovered through the 3-40° bends too.
    error = _angle_between(smpl.smpl_global_rotations(pose), smpl.smpl_global_rotations(motion.pose))
    assert error[:, [1, 2, 4, 5]].max() < 1e-6


# --- IK on the real HumanML3D sample ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_joints(humanml3d_sample: Path) -> np.ndarray:
    return np.load(humanml3d_sample / "new_joints_012314.npy").astype(np.float64)


def test_sample_round_trip_under_a_millimetre(sample_joints: np.ndarray) -> None:
    motion, back = _round_trip(sample_joints)
    assert motion.pose.shape == (len(sample_joints), 24, 3)
    assert _mpjpe(back, sample_joints) < 1e-3
    # HumanML3D's default skeleton (not measured on this clip) still fits within a centimetre.
    _, default_back = _round_trip(sample_joints, REST)
    assert _mpjpe(default_back, sample_joints) < 1e-2


def test_sample_knees_and_elbows_bend_as_hinges(sample_joints: np.ndarray) -> None:
    motion = smpl.joints_to_smpl(sample_joints)
    for upper, middle, end in ((1, 4, 7), (2, 5, 8), (16, 18, 20), (17, 19, 21)):
        a = sample_joints[:, middle] - sample_joints[:, upper]
        b = sample_joints[:, end] - sample_joints[:, middle]
        bend = np.degrees(np.arccos((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))
        bent = (bend > 20) & (bend < 160)
        aa = motion.pose[bent, middle]
        # A rotation about the rest hinge axis by the bend angle, flexing the right way.
        np.testing.assert_allclose(aa, HINGES[middle] * np.radians(bend[bent])[:, None], atol=1e-6)


def test_sample_has_no_twist_flips(sample_joints: np.ndarray) -> None:
    motion = smpl.joints_to_smpl(sample_joints)
    steps = _steps_deg(motion.pose)
    frames, joints = np.nonzero(steps > 60)
    # The only fast change is the right upper arm's twist during the serve's racket swing, where the elbow plane
    # itself turns over within two frames (wrist at several m/s); everywhere else the rotations change smoothly.
    wrist_speed = np.linalg.norm(np.diff(sample_joints[:, 21], axis=0), axis=-1) * 20
    assert set(joints.tolist()) <= {17}
    assert np.all(wrist_speed[frames] > 5.0)
    assert np.percentile(steps, 99) < 30


def test_dataset_clips_round_trip_under_a_millimetre(shared_dir: Path) -> None:
    from safemotion.data.mocap_import import load_motion

    for name in ("walk", "cartwheel", "backflip"):
        joints = load_motion(shared_dir / "data" / "deepmimic" / f"humanoid3d_{name}.txt").joints.astype(np.float64)
        _, back = _round_trip(joints)
        assert _mpjpe(back, joints) < 1e-3, name
