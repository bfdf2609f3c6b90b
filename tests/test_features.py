"""HumanML3D 263-d features: extraction, recovery, canonical frame, contacts and mirroring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from safemotion.motion import features as F
from safemotion.motion import rotations as rot
from safemotion.motion import skeleton

SLICES = {
    "root_rot_vel": F.ROOT_ROT_VEL,
    "root_lin_vel": F.ROOT_LIN_VEL,
    "root_y": F.ROOT_Y,
    "ric": F.RIC,
    "rot": F.ROT,
    "local_vel": F.LOCAL_VEL,
    "contacts": F.CONTACTS,
}
FPS = 20


def yaw_quat(degrees: np.ndarray | float) -> np.ndarray:
    """Quaternions for rotations about +Y."""
    return rot.axis_angle_to_quat(np.deg2rad(np.asarray(degrees, dtype=np.float64))[..., None] * np.array([0.0, 1.0, 0.0]))


def walking_clip(frames: int = 60, turn_deg_per_frame: float = 0.0, speed: float = 1.2) -> np.ndarray:
    """Rest skeleton walking along its facing direction with swinging legs and arms, optionally turning: [T, 22, 3]."""
    offsets = skeleton.bone_offsets(skeleton.rest_joints())
    t = np.arange(frames)
    phase = 2 * np.pi * t / 20.0  # one stride cycle per second
    x_axis = np.array([1.0, 0.0, 0.0])
    local = np.broadcast_to(np.eye(3), (frames, 22, 3, 3)).copy()
    swing = {1: 30.0, 2: -30.0, 16: -25.0, 17: 25.0}  # hips and shoulders, left/right in opposition
    for joint, amplitude in swing.items():
        local[:, joint] = rot.axis_angle_to_matrix(np.deg2rad(amplitude * np.sin(phase))[:, None] * x_axis)
    for joint, sign in ((4, 1.0), (5, -1.0)):  # knees bend when the leg swings back
        bend = 35.0 * np.clip(sign * np.sin(phase - 0.5), 0.0, None)
        local[:, joint] = rot.axis_angle_to_matrix(np.deg2rad(bend)[:, None] * x_axis)
    for joint in (18, 19):  # elbows slightly bent
        local[:, joint] = rot.axis_angle_to_matrix(np.deg2rad(-20.0 + 5.0 * np.sin(phase))[:, None] * x_axis)

    yaw = turn_deg_per_frame * t
    root_rot = rot.quat_to_matrix(yaw_quat(yaw))
    heading = rot.qrot(yaw_quat(yaw), np.array([0.0, 0.0, 1.0]))
    root_pos = np.zeros((frames, 3))
    root_pos[1:] = np.cumsum(heading[:-1] * speed / FPS, axis=0)
    root_pos[:, 1] = skeleton.REST_PELVIS_HEIGHT + 0.02 * np.cos(2 * phase)

    world = np.zeros((frames, 22, 3, 3))
    joints = np.zeros((frames, 22, 3))
    world[:, 0] = root_rot @ local[:, 0]
    joints[:, 0] = root_pos
    for j in range(1, 22):
        parent = skeleton.SMPL22_PARENTS[j]
        world[:, j] = world[:, parent] @ local[:, j]
        joints[:, j] = joints[:, parent] + (world[:, parent] @ offsets[j])
    return joints


def standing_clip(frames: int = 30) -> np.ndarray:
    """The rest pose held still: [T, 22, 3]."""
    return np.repeat(skeleton.rest_joints()[None], frames, axis=0)


def moved(joints: np.ndarray, yaw_deg: float, shift: tuple[float, float, float]) -> np.ndarray:
    """Clip rotated about +Y and translated as a whole."""
    return rot.qrot(np.broadcast_to(yaw_quat(yaw_deg), joints.shape[:-1] + (4,)), joints) + np.array(shift)


def max_error_per_slice(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {name: float(np.abs(a[..., s] - b[..., s]).max()) for name, s in SLICES.items()}


@pytest.fixture(scope="module")
def sample(humanml3d_sample: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features [170, 263], joints [170, 22, 3]) of HumanML3D clip 012314."""
    return (
        np.load(humanml3d_sample / "new_joint_vecs_012314.npy"),
        np.load(humanml3d_sample / "new_joints_012314.npy"),
    )


# --- layout and recovery ------------------------------------------------------------------------------------------


def test_layout_adds_up():
    sizes = [s.stop - s.start for s in SLICES.values()]
    assert sizes == [1, 2, 1, 63, 126, 66, 4]
    assert sum(sizes) == F.FEATURE_DIM == 263


def test_recover_from_ric_matches_published_joints(sample):
    vecs, joints = sample
    recovered = F.recover_from_ric(vecs)
    assert recovered.shape == joints.shape and recovered.dtype == np.float32
    assert np.abs(recovered - joints).max() < 1e-6  # measured 2.4e-7 (float32 rounding)
    batched = F.recover_from_ric(np.stack([vecs, vecs[::-1]]))
    np.testing.assert_array_equal(batched[0], recovered)
    assert np.abs(batched[1] - F.recover_from_ric(vecs[::-1])).max() == 0


def test_sample_frame0_matches_reference_numbers(sample):
    vecs, _ = sample
    np.testing.assert_allclose(vecs[0, 3], 0.837, atol=5e-4)
    np.testing.assert_allclose(vecs[0, 4:7], [0.0806, 0.7731, 0.0066], atol=5e-5)


def test_recover_root_starts_at_origin_facing_forward(sample):
    vecs, joints = sample
    quat, pos = F.recover_root(vecs)
    np.testing.assert_array_equal(quat[0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(pos[0], [0.0, vecs[0, 3], 0.0], atol=1e-7)
    np.testing.assert_allclose(pos, joints[:, 0], atol=1e-6)


# --- round trips on the real sample -------------------------------------------------------------------------------


def test_round_trip_on_sample_with_its_own_skeleton_is_exact_away_from_the_end(sample):
    """With the sample's own bone lengths, re-extraction reproduces HumanML3D exactly except where the sigma-20
    facing smoothing sees the missing last frame (its 80-frame radius reaches back to row 89)."""
    vecs, _ = sample
    joints = F.recover_from_ric(vecs).astype(np.float64)
    lengths = np.linalg.norm(skeleton.bone_offsets(joints[0]), axis=-1)
    again, _ = F.process_joints(joints, target_offsets=skeleton.RAW_OFFSETS * lengths[:, None])
    assert again.shape == (len(vecs) - 1, 263)
    head = max_error_per_slice(again[:89], vecs[:89])
    # Measured: ≤ 2.7e-6 on every slice (float32 input).
    assert all(err < 1e-5 for err in head.values()), head
    whole = max_error_per_slice(again, vecs[:-1])
    # Measured: rot_vel 3.0e-4, lin_vel 1.4e-4, root_y 3.6e-7, ric 6.8e-3, rot 1.3e-2, local_vel 4.1e-4, contacts 0.
    bounds = dict(root_rot_vel=5e-4, root_lin_vel=2.5e-4, root_y=1e-6, ric=1e-2, rot=2e-2, local_vel=6e-4, contacts=0.0)
    assert all(whole[k] <= bounds[k] for k in bounds), whole


def test_round_trip_on_sample_with_default_skeleton(sample):
    """extract_features(recover_from_ric(vecs)) ≈ vecs; differences come from re-targeting to the averaged skeleton."""
    vecs, _ = sample
    again = F.extract_features(F.recover_from_ric(vecs))
    assert again.shape == (len(vecs) - 1, 263) and again.dtype == np.float32
    err = max_error_per_slice(again, vecs[:-1])
    # Measured: rot_vel 0.0227, lin_vel 0.0045, root_y 0.0018, ric 0.041, rot 0.066, local_vel 0.021, contacts 0.
    bounds = dict(root_rot_vel=0.03, root_lin_vel=0.006, root_y=0.0025, ric=0.05, rot=0.08, local_vel=0.025, contacts=0.0)
    assert all(err[k] <= bounds[k] for k in bounds), err
    mean_ric = float(np.abs(again[:, F.RIC] - vecs[:-1, F.RIC]).mean())
    assert mean_ric < 0.003  # measured 0.0019


# --- synthetic motion ---------------------------------------------------------------------------------------------


def test_frame_count_rule_and_dtype():
    joints = walking_clip(frames=25)
    assert F.extract_features(joints).shape == (24, 263)
    assert F.extract_features(joints[:2]).shape == (1, 263)
    with pytest.raises(ValueError, match="at least 2 frames"):
        F.extract_features(joints[:1])
    with pytest.raises(ValueError, match=r"\[T, 22, 3\]"):
        F.extract_features(joints[:, :21])
    bad = joints.copy()
    bad[3, 5, 1] = np.nan
    with pytest.raises(ValueError, match="frame 3"):
        F.extract_features(bad)


def test_features_recover_the_canonical_joints():
    features, canonical = F.process_joints(walking_clip(frames=50, turn_deg_per_frame=2.0))
    recovered = F.recover_from_ric(features)
    assert np.abs(recovered - canonical[:-1]).max() < 1e-5  # float32 features


def test_features_ignore_global_placement():
    joints = walking_clip(frames=40, turn_deg_per_frame=1.0)
    base = F.extract_features(joints)
    elsewhere = F.extract_features(moved(joints, yaw_deg=137.0, shift=(3.0, 0.4, -2.0)))
    assert np.abs(base - elsewhere).max() < 1e-6  # measured 5.8e-15


def test_canonicalize_puts_clip_on_floor_at_origin_facing_z():
    joints = moved(walking_clip(frames=30), yaw_deg=-70.0, shift=(1.5, 0.3, 2.0))
    canonical = F.canonicalize(joints)
    np.testing.assert_allclose(canonical[..., 1].min(), 0.0, atol=1e-12)
    np.testing.assert_allclose(canonical[0, 0, [0, 2]], [0.0, 0.0], atol=1e-12)
    r_hip, l_hip, r_sdr, l_sdr = skeleton.FACE_JOINTS
    across = canonical[0, r_hip] - canonical[0, l_hip] + canonical[0, r_sdr] - canonical[0, l_sdr]
    forward = np.cross([0.0, 1.0, 0.0], across)
    np.testing.assert_allclose(forward / np.linalg.norm(forward), [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(canonical, F.canonicalize(walking_clip(frames=30)), atol=1e-12)
    # A clip facing exactly -Z is turned by a pure yaw (antiparallel facing).
    back = F.canonicalize(moved(standing_clip(2), 180.0, (0.0, 0.0, 0.0)))
    np.testing.assert_allclose(back, F.canonicalize(standing_clip(2)), atol=1e-12)


def test_uniform_skeleton_sets_target_lengths_and_keeps_directions():
    source = walking_clip(frames=10) * 1.1  # a taller person
    out = F.uniform_skeleton(source)
    parents = list(skeleton.SMPL22_PARENTS[1:])
    bones_out = out[:, 1:] - out[:, parents]
    bones_in = source[:, 1:] - source[:, parents]
    np.testing.assert_allclose(np.linalg.norm(bones_out, axis=-1), np.broadcast_to(skeleton.BONE_LENGTHS[1:], (10, 21)), atol=1e-12)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(unit(bones_out), unit(bones_in), atol=1e-12)
    np.testing.assert_allclose(out[:, 0], source[:, 0] / 1.1, atol=1e-12)  # root scaled by the leg ratio


def test_standing_rest_pose_features():
    features = F.extract_features(standing_clip(20))
    np.testing.assert_array_equal(features[:, F.CONTACTS], 1.0)
    np.testing.assert_allclose(features[:, F.ROOT_ROT_VEL.start : F.ROOT_Y.start], 0.0, atol=1e-7)
    np.testing.assert_allclose(features[:, 3], skeleton.REST_PELVIS_HEIGHT, atol=1e-6)
    np.testing.assert_allclose(features[:, F.LOCAL_VEL], 0.0, atol=1e-7)
    identity6d = np.tile([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 21)
    np.testing.assert_allclose(features[:, F.ROT], np.broadcast_to(identity6d, (19, 126)), atol=1e-6)
    rest = skeleton.rest_joints()
    np.testing.assert_allclose(features[0, F.RIC].reshape(21, 3), rest[1:] - rest[0] * [1, 0, 1], atol=1e-6)


def test_contacts_follow_the_moving_foot():
    joints = standing_clip(12)
    lift = np.zeros(12)
    lift[4:8] = [0.05, 0.15, 0.25, 0.35]  # left ankle and foot rise 10 cm per frame (0.01 m² > 0.002)
    lift[8:] = 0.35
    joints[:, [7, 10], 1] += lift[:, None]
    joints[:, [4], 1] += lift[:, None]
    contacts = F.foot_contacts(joints)
    assert contacts.shape == (11, 4)
    expected_left = np.ones(11)
    expected_left[3:7] = 0.0  # steps 3->4 (0.05 m: 0.0025) ... 6->7
    np.testing.assert_array_equal(contacts[:, 0], expected_left)
    np.testing.assert_array_equal(contacts[:, 1], expected_left)
    np.testing.assert_array_equal(contacts[:, 2:], 1.0)
    # Just under and just over the threshold (squared displacement 0.002).
    step = np.zeros((2, 22, 3))
    step[1, 10, 2] = np.sqrt(0.0019)
    step[1, 11, 2] = np.sqrt(0.0021)
    np.testing.assert_array_equal(F.foot_contacts(step), [[1.0, 1.0, 1.0, 0.0]])


def test_turning_walk_root_velocities():
    """Interior frames of a constant-rate turn: dim 0 = minus half the body's yaw step about +Y (it is the step of the
    root rotation that undoes the facing), dims 1:3 = the walking step in the root's facing frame."""
    turn, speed, frames = 1.5, 1.2, 200
    features = F.extract_features(walking_clip(frames=frames, turn_deg_per_frame=turn, speed=speed))
    interior = slice(81, frames - 82)  # beyond the 80-frame radius of the facing smoothing
    np.testing.assert_allclose(features[interior, 0], -np.deg2rad(turn) / 2, atol=1e-6)  # turning left (+x) is negative
    # The step t -> t+1 (taken along heading t) is expressed in the facing frame of t+1, one yaw step further.
    step = np.deg2rad(turn)
    np.testing.assert_allclose(features[interior, 1], -np.sin(step) * speed / FPS, atol=1e-6)
    np.testing.assert_allclose(features[interior, 2], np.cos(step) * speed / FPS, atol=1e-6)
    # Frame 0's root rotation is identity (HumanML3D quirk), so the first yaw step carries the smoothing offset.
    assert features[0, 0] != pytest.approx(features[1, 0], abs=1e-4)


# --- mirroring ----------------------------------------------------------------------------------------------------


def test_mirror_twice_is_identity():
    joints = walking_clip(frames=10, turn_deg_per_frame=3.0)
    np.testing.assert_array_equal(F.mirror_joints(F.mirror_joints(joints)), joints)
    features = F.extract_features(joints)
    np.testing.assert_array_equal(F.mirror_features(F.mirror_features(features)), features)
    assert F.mirror_features(features[None]).shape == (1,) + features.shape


def test_mirror_joints_swaps_sides():
    rest = skeleton.rest_joints()
    mirrored = F.mirror_joints(rest)
    np.testing.assert_allclose(mirrored, rest, atol=1e-15)  # the rest pose is symmetric
    joints = walking_clip(frames=5)
    mirrored = F.mirror_joints(joints)
    np.testing.assert_array_equal(mirrored[:, 1, 0], -joints[:, 2, 0])
    np.testing.assert_array_equal(mirrored[:, 20], joints[:, 21] * [-1, 1, 1])


def test_mirrored_features_match_features_of_mirrored_joints():
    joints = walking_clip(frames=60, turn_deg_per_frame=2.0)
    direct = F.extract_features(F.mirror_joints(joints))
    via_features = F.mirror_features(F.extract_features(joints))
    assert np.abs(direct - via_features).max() < 1e-6  # measured <= 2.3e-16
    # The walk has a real left/right asymmetry, so mirroring changes the features.
    assert np.abs(direct - F.extract_features(joints)).max() > 0.1


def test_mirror_consistency_on_sample(sample):
    vecs, _ = sample
    joints = F.uniform_skeleton(F.recover_from_ric(vecs))  # symmetric bone lengths: mirroring commutes exactly
    direct = F.extract_features(F.mirror_joints(joints))
    via_features = F.mirror_features(F.extract_features(joints))
    assert np.abs(direct - via_features).max() < 1e-6  # measured <= 2.3e-16
    # Recovering mirrored features gives mirrored joints.
    recovered = F.recover_from_ric(F.extract_features(joints))
    np.testing.assert_allclose(F.recover_from_ric(via_features), F.mirror_joints(recovered), atol=1e-5)


def test_ground_first_keeps_the_motions_own_floor_through_the_retarget():
    clip = walking_clip(frames=40)
    # a non-rigid skeleton, as a decoder gives: legs 10% shorter than in frame 0 after it, feet on the floor
    # throughout; the retarget scales the root path by frame 0's leg ratio (1), so the lengthened legs sink
    varying = clip * 0.9
    varying[0] = clip[0]
    lifted = F.extract_features(varying)
    grounded = F.extract_features(varying, ground_first=True)
    _, canonical = F.process_joints(varying, ground_first=True)
    sink = -canonical[..., 1].min()
    assert sink > 0.05  # the retargeted feet go under the floor...
    np.testing.assert_allclose(lifted[:, 3] - grounded[:, 3], sink, atol=1e-5)  # ...and the default lifts the root
    # the take's own floor wherever the take stands; a rigid clip on the floor comes out as by default
    raised = F.extract_features(moved(varying, yaw_deg=0.0, shift=(0.0, 0.7, 0.0)), ground_first=True)
    np.testing.assert_allclose(raised, grounded, atol=1e-5)
    np.testing.assert_allclose(F.extract_features(clip, ground_first=True), F.extract_features(clip), atol=1e-5)
