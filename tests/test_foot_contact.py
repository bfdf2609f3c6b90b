"""Foot clean-up (motion.foot_contact) on synthetic motions: contacts, grounding, pinning with leg IK, blending."""

from __future__ import annotations

import numpy as np
import pytest

from safemotion.motion import skeleton
from safemotion.motion.features import CONTACTS, FEATURE_DIM
from safemotion.motion.foot_contact import (
    STAND_GAP_FRAMES,
    FootCleanupConfig,
    clean_feet,
    contact_runs,
    detect_contacts,
    two_bone_ik,
)

FPS = 20.0
PARENTS = np.array(skeleton.SMPL22_PARENTS[1:])
L_HIP, L_KNEE, L_ANKLE, L_TOE = 1, 4, 7, 10
R_HIP, R_KNEE, R_ANKLE, R_TOE = 2, 5, 8, 11
CROUCH_M = 0.05


def crouched_pose() -> np.ndarray:
    """The rest pose with the body 5 cm lower and both knees bent forward (ankles and toes where they were)."""
    joints = skeleton.rest_joints()
    feet = joints[[L_ANKLE, R_ANKLE, L_TOE, R_TOE]].copy()
    joints[:, 1] -= CROUCH_M
    joints[[L_ANKLE, R_ANKLE, L_TOE, R_TOE]] = feet
    for hip, knee, ankle in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
        thigh, shin = skeleton.BONE_LENGTHS[knee], skeleton.BONE_LENGTHS[ankle]
        down = joints[ankle] - joints[hip]
        distance = np.linalg.norm(down)
        along = (thigh**2 - shin**2 + distance**2) / (2 * distance)
        joints[knee] = joints[hip] + along * down / distance + np.sqrt(thigh**2 - along**2) * np.array([0, 0, 1.0])
    return joints


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    return np.linalg.norm(joints[:, 1:] - joints[:, PARENTS], axis=-1)


def gliding_walk(frames: int = 40, step: float = 0.015, planted: tuple[int, int] = (10, 25)) -> tuple:
    """The crouched body moving forward `step` m per frame with both feet sliding along; the model's contact channels
    say the left foot is planted in frames [planted) and nothing else is; the right foot swings 10 cm up."""
    joints = np.repeat(crouched_pose()[None], frames, axis=0)
    joints[:, :, 2] += step * np.arange(frames)[:, None]
    joints[:, [R_ANKLE, R_TOE], 1] += 0.10
    features = np.zeros((frames, FEATURE_DIM), np.float32)
    features[planted[0]:planted[1], CONTACTS.start:CONTACTS.start + 2] = 1.0
    return joints, features


def test_detection_trusts_the_model_unless_velocity_disagrees():
    joints, features = gliding_walk(step=0.015)  # 0.3 m/s: slow enough to stay planted
    contacts = detect_contacts(joints, features, FPS)
    assert contact_runs(contacts[:, 0]) == [(10, 25)] and contact_runs(contacts[:, 1]) == [(10, 25)]
    assert not contacts[:, 2:].any()  # the right foot is 10 cm up and moving: free
    fast, _ = gliding_walk(step=0.1)  # 2 m/s: the model's "planted" is overruled
    assert not detect_contacts(fast, features, FPS).any()
    still, none = gliding_walk(step=0.0)[0], np.zeros_like(features)  # standing still on the floor, model says free
    found = detect_contacts(still, none, FPS)
    assert found[:, :2].all() and not found[:, 2:].any()  # the raised right foot stays free


def test_a_sliding_planted_foot_becomes_planted_and_bones_keep_their_lengths():
    joints, features = gliding_walk()
    cleaned = clean_feet(joints, features, FPS)
    out = cleaned.joints
    for joint in (L_ANKLE, L_TOE):  # pinned: no horizontal or vertical motion while planted
        assert np.abs(out[10:25, joint] - out[10, joint]).max() < 1e-6
    assert np.abs(joints[10:25, L_TOE, 2] - joints[10, L_TOE, 2]).max() > 0.2  # it slid 21 cm before
    np.testing.assert_allclose(bone_lengths(out), bone_lengths(joints), atol=1e-6)  # far below the 1 mm asked for
    assert cleaned.report.contact_frames == {"left_ankle": 15, "left_toe": 15, "right_ankle": 0, "right_toe": 0}
    assert cleaned.report.max_pin_error_m < 1e-6
    raised = joints + np.array([0.0, FootCleanupConfig().toe_height, 0.0])  # its planted toe rests at toe height
    np.testing.assert_allclose(out[:, [0, R_HIP, L_HIP, 12, 15]], raised[:, [0, R_HIP, L_HIP, 12, 15]], atol=1e-9)
    np.testing.assert_allclose(out[:6], raised[:6], atol=1e-9)  # only grounded well before the contact blends in
    knee_forward = out[10:25, L_KNEE, 2] - (out[10:25, L_HIP, 2] + out[10:25, L_ANKLE, 2]) / 2
    assert (knee_forward > 0).all()  # the knee keeps bending forward (the leg's own bending plane)


def test_blending_in_and_out_has_no_velocity_jump():
    joints, features = gliding_walk()
    config = FootCleanupConfig(blend_frames=4)
    out = clean_feet(joints, features, FPS, config).joints
    velocity = np.diff(out[:, L_ANKLE], axis=0)
    jump = np.linalg.norm(np.diff(velocity, axis=0), axis=-1).max()
    # Pinned while the body moved on, the foot is up to `offset` away from where it was generated at the ends of the
    # contact. A hard pin jumps by that in one frame; the smoothstep spreads it over the blend, its steepest step is
    # 1.5 / (B + 1) of it.
    offset = np.linalg.norm(out[10:25, L_ANKLE] - joints[10:25, L_ANKLE], axis=-1).max()
    assert offset > 0.1
    hard = clean_feet(joints, features, FPS, FootCleanupConfig(blend_frames=0)).joints
    hard_jump = np.linalg.norm(np.diff(np.diff(hard[:, L_ANKLE], axis=0), axis=0), axis=-1).max()
    assert hard_jump > 0.9 * offset
    assert jump < 1.5 / (config.blend_frames + 1) * offset + 0.015
    assert jump < 0.45 * hard_jump


def test_grounding_puts_the_planted_toes_at_toe_height():
    toe_height = FootCleanupConfig().toe_height
    joints, features = gliding_walk()
    floating = joints + np.array([0.0, 0.12, 0.0])
    cleaned = clean_feet(floating, features, FPS)
    assert cleaned.report.floor_shift_m == pytest.approx(toe_height - 0.12)
    assert cleaned.joints[10:25, L_TOE, 1] == pytest.approx(np.full(15, toe_height))
    sunk = clean_feet(joints - np.array([0.0, 0.03, 0.0]), features, FPS)
    assert sunk.report.floor_shift_m == pytest.approx(toe_height + 0.03)
    # only ankles planted: the lowest planted joint goes to the floor
    ankles_only = features.copy()
    ankles_only[:, CONTACTS.start + 1] = 0.0
    assert clean_feet(floating, ankles_only, FPS).report.floor_shift_m == pytest.approx(-0.12)
    # nothing planted at all (a jump in the air): the lowest foot joint goes to the floor
    airborne = clean_feet(floating, np.zeros_like(features), FPS)
    assert airborne.report.floor_shift_m == pytest.approx(-0.12) and not airborne.contacts.any()


def test_feet_planted_at_different_heights_rest_on_the_floor_and_a_swinging_foot_keeps_its_clearance():
    toe_height = FootCleanupConfig().toe_height
    joints, features = gliding_walk(frames=60, step=0.0, planted=(5, 20))
    joints[:, [L_ANKLE, L_TOE], 1] += 0.04  # the left foot plants 4 cm up ...
    joints[35:50, [R_ANKLE, R_TOE], 1] -= 0.10  # ... the right one on the floor, after swinging 10 cm up
    features[35:50, CONTACTS.start + 2:CONTACTS.start + 4] = 1.0
    features[5:30, CONTACTS.start:CONTACTS.start + 2] = 1.0  # three planted toe runs: left, left, right
    cleaned = clean_feet(joints, features, FPS)
    toes = cleaned.joints[:, [L_TOE, R_TOE], 1]
    assert cleaned.report.floor_shift_m == pytest.approx(toe_height - 0.04)  # the median planted toe
    assert toes[5:30, 0] == pytest.approx(np.full(25, toe_height), abs=1e-6)  # pinned where it was planted
    assert toes[35:50, 1].min() >= -1e-9  # the right foot, planted lower, is kept out of the floor
    assert toes[22:26, 1] == pytest.approx(joints[22:26, R_TOE, 1], abs=1e-6)  # swinging: its clearance kept


def test_a_body_standing_on_sliding_feet_stops_drifting_and_a_walk_keeps_its_path():
    joints, features = gliding_walk(frames=60, step=0.015)  # 0.3 m/s drift with both feet planted, 3 s
    joints[:, [R_ANKLE, R_TOE], 1] -= 0.10  # the right foot on the floor too
    features[:, CONTACTS] = 0.0
    features[:, [CONTACTS.start, CONTACTS.start + 3]] = 1.0  # a foot counts as planted by its ankle or its toe
    features[30:30 + STAND_GAP_FRAMES, CONTACTS.start + 3] = 0.0  # a weight shift does not end the stand
    cleaned = clean_feet(joints, features, FPS)
    assert cleaned.contacts[:, 0].all() and cleaned.contacts[:, 3].sum() == 60 - STAND_GAP_FRAMES
    pelvis = cleaned.joints[:, 0, [0, 2]]
    assert np.linalg.norm(pelvis - pelvis[0], axis=-1).max() < 1e-6  # stands in place (it drifted 0.89 m)
    assert cleaned.report.slide_removed_m == pytest.approx(0.015 * 59)
    np.testing.assert_allclose(bone_lengths(cleaned.joints), bone_lengths(joints), atol=1e-6)
    # double supports shorter than stand_frames between steps longer than a weight shift (a walk): the root path is
    # the decoder's
    stand = FootCleanupConfig().stand_frames
    steps = features.copy()
    steps[:, CONTACTS] = 0.0
    steps[10:10 + stand - 1, CONTACTS] = 1.0
    steps[10 + stand + STAND_GAP_FRAMES:10 + 2 * stand + STAND_GAP_FRAMES - 1, CONTACTS] = 1.0
    walking = clean_feet(joints, steps, FPS)
    assert walking.report.slide_removed_m == 0.0
    np.testing.assert_allclose(walking.joints[:, 0, [0, 2]], joints[:, 0, [0, 2]], atol=1e-9)


def test_a_swinging_foot_never_goes_below_the_floor():
    joints, features = gliding_walk()
    ankle = joints[:, R_ANKLE].copy()
    joints[30:36, R_TOE] = ankle[30:36] + np.array([0.0, -0.13, 0.05])  # toe pointing down, 3 cm into the floor
    joints[33, R_ANKLE:R_ANKLE + 1, 1] -= 0.12  # and once the ankle too (8 cm + 2 cm below)
    cleaned = clean_feet(joints, features, FPS)
    assert cleaned.joints[:, [L_ANKLE, L_TOE, R_ANKLE, R_TOE], 1].min() > -1e-9
    np.testing.assert_allclose(bone_lengths(cleaned.joints), bone_lengths(joints), atol=1e-6)


def test_contacts_out_of_the_legs_reach_are_cut_and_nothing_breaks():
    joints, features = gliding_walk(frames=60, step=0.045, planted=(5, 55))  # 0.9 m/s for 2.5 s: cannot stay planted
    cleaned = clean_feet(joints, features, FPS)
    kept = cleaned.contacts[:, 0]
    assert 1 <= kept.sum() < 50
    hip_to_ankle = np.linalg.norm(cleaned.joints[:, L_ANKLE] - cleaned.joints[:, L_HIP], axis=-1)
    leg = skeleton.BONE_LENGTHS[L_KNEE] + skeleton.BONE_LENGTHS[L_ANKLE]
    assert hip_to_ankle.max() <= leg + 1e-9
    assert np.isfinite(cleaned.joints).all()
    np.testing.assert_allclose(bone_lengths(cleaned.joints), bone_lengths(joints), atol=1e-6)


def test_two_bone_ik_reaches_and_keeps_lengths():
    pose = crouched_pose()[None]
    hip, knee, ankle = pose[:, L_HIP], pose[:, L_KNEE], pose[:, L_ANKLE]
    forward = np.array([[0.0, 0.0, 1.0]])
    target = ankle + np.array([[0.05, 0.1, -0.15]])
    new_knee, new_ankle = two_bone_ik(hip, knee, ankle, target, forward)
    np.testing.assert_allclose(new_ankle, target, atol=1e-9)
    assert np.linalg.norm(new_knee - hip) == pytest.approx(np.linalg.norm(knee - hip))
    assert np.linalg.norm(new_ankle - new_knee) == pytest.approx(np.linalg.norm(ankle - knee))
    far = hip + np.array([[0.0, -2.0, 0.0]])  # out of reach: the leg straightens towards it
    _, reached = two_bone_ik(hip, knee, ankle, far, forward)
    leg = skeleton.BONE_LENGTHS[L_KNEE] + skeleton.BONE_LENGTHS[L_ANKLE]
    assert np.linalg.norm(reached - hip) == pytest.approx(leg)
    np.testing.assert_allclose((reached - hip)[0, [0, 2]], 0.0, atol=1e-9)


def test_bad_input_is_refused_with_the_reason():
    joints, features = gliding_walk()
    with pytest.raises(ValueError, match=r"features of shape \[40, 263\]"):
        clean_feet(joints, features[:-1], FPS)
    with pytest.raises(ValueError, match="NaN"):
        clean_feet(np.where(np.arange(40)[:, None, None] == 3, np.nan, joints), features, FPS)
    with pytest.raises(ValueError, match="blend_frames"):
        clean_feet(joints, features, FPS, FootCleanupConfig(blend_frames=-1))
    with pytest.raises(ValueError, match="stand_frames >= 2, got 1, 4 and 1"):
        clean_feet(joints, features, FPS, FootCleanupConfig(stand_frames=1, min_contact_frames=1))
