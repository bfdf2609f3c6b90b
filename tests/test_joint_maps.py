"""Joint-map presets onto the 22 SMPL joints: preset and prefix detection, and sane skeletons on synthetic rigs."""

from __future__ import annotations

import numpy as np
import pytest

from safemotion.data.joint_maps import PRESETS, Lerp, apply_joint_map, detect_preset
from safemotion.motion.skeleton import LEFT_CHAIN, RIGHT_CHAIN, SMPL22_NAMES, SMPL22_PARENTS

# A T-posed adult in the HumanML3D frame (metres, Y-up, facing +Z, left at +x), SMPL-22 order.
TPOSE = np.array([
    [0.0, 0.93, 0.0], [0.09, 0.86, 0.0], [-0.09, 0.86, 0.0], [0.0, 1.04, 0.0], [0.1, 0.48, 0.01], [-0.1, 0.48, 0.01],
    [0.0, 1.17, 0.0], [0.1, 0.07, -0.03], [-0.1, 0.07, -0.03], [0.0, 1.22, 0.02], [0.11, 0.02, 0.1],
    [-0.11, 0.02, 0.1], [0.0, 1.44, 0.0], [0.07, 1.37, 0.0], [-0.07, 1.37, 0.0], [0.0, 1.53, 0.05],
    [0.18, 1.39, 0.0], [-0.18, 1.39, 0.0], [0.44, 1.39, 0.0], [-0.44, 1.39, 0.0], [0.7, 1.39, 0.0], [-0.7, 1.39, 0.0],
])

# Full joint lists of real rigs; names a preset does not use are helpers (twist bones, fingers, toes, end joints).
BANDAI = ["joint_Root", "Hips", "Spine", "Chest", "Neck", "Head", "Shoulder_L", "UpperArm_L", "LowerArm_L", "Hand_L",
          "Shoulder_R", "UpperArm_R", "LowerArm_R", "Hand_R", "UpperLeg_L", "LowerLeg_L", "Foot_L", "Toes_L",
          "UpperLeg_R", "LowerLeg_R", "Foot_R", "Toes_R"]
CGSPEED = ["Hips", "LHipJoint", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase", "RHipJoint", "RightUpLeg",
           "RightLeg", "RightFoot", "RightToeBase", "LowerBack", "Spine", "Spine1", "Neck", "Neck1", "Head",
           "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "LeftFingerBase", "LeftHandIndex1", "LThumb",
           "RightShoulder", "RightArm", "RightForeArm", "RightHand", "RightFingerBase", "RightHandIndex1", "RThumb"]
MIXAMO = ["Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "HeadTop_End", "LeftShoulder", "LeftArm",
          "LeftForeArm", "LeftHand", "LeftHandThumb1", "LeftHandIndex1", "RightShoulder", "RightArm", "RightForeArm",
          "RightHand", "RightHandThumb1", "RightHandIndex1", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase",
          "LeftToe_End", "RightUpLeg", "RightLeg", "RightFoot", "RightToeBase", "RightToe_End"]
CC_BASE = ["RL_BoneRoot"] + [f"CC_Base_{n}" for n in (
    "Hip", "Pelvis", "L_Thigh", "L_Calf", "L_Foot", "L_ToeBaseShareBone", "L_ToeBase", "L_BigToe1", "L_CalfTwist01",
    "L_ThighTwist01", "R_Thigh", "R_ThighTwist01", "R_Calf", "R_Foot", "R_ToeBase", "R_BigToe1", "R_CalfTwist01",
    "Waist", "Spine01", "Spine02", "NeckTwist01", "NeckTwist02", "Head", "FacialBone", "JawRoot", "L_Eye",
    "L_Clavicle", "L_Upperarm", "L_Forearm", "L_ForearmTwist01", "L_Hand", "L_Mid1", "L_Thumb1",
    "L_UpperarmTwist01", "R_Clavicle", "R_Upperarm", "R_UpperarmTwist01", "R_Forearm", "R_ForearmTwist01",
    "R_Hand", "R_Mid1", "R_Thumb1", "R_RibsTwist", "L_RibsTwist")]
AB_CHEST = ["Hips", "Ab", "Chest", "Neck", "Head", "LeftCollar", "LeftShoulder", "LeftElbow", "LeftWrist",
            "RightCollar", "RightShoulder", "RightElbow", "RightWrist", "LeftHip", "LeftKnee", "LeftAnkle", "LeftToes",
            "RightHip", "RightKnee", "RightAnkle", "RightToes"]  # assimp's Boxing_Toes.bvh
RIGS = {"bandai": BANDAI, "cmu": CGSPEED, "mixamo": MIXAMO, "cc_base": CC_BASE, "smpl": list(SMPL22_NAMES)}


def synthetic_rig(preset: str, names: list[str], prefix: str = "", frames: int = 3) -> np.ndarray:
    """Positions [T, J, 3] of a rig: mapped joints on TPOSE, helpers far away so that picking one shows."""
    rng = np.random.default_rng(0)
    positions = rng.uniform(5.0, 9.0, (frames, len(names), 3))
    for smpl_index, entry in enumerate(PRESETS[preset]):
        if isinstance(entry, str):
            positions[:, names.index(prefix + entry)] = TPOSE[smpl_index]
    return positions


@pytest.mark.parametrize("prefix", ["mixamorig:", "mixamorig7:", "mixamorig1:", "Neo_", "", "Rig:mixamorig:"])
def test_mixamo_names_with_any_prefix(prefix):
    names = [prefix + n for n in MIXAMO]
    assert detect_preset(names) == "mixamo"
    joints = apply_joint_map(synthetic_rig("mixamo", names, prefix), names, "mixamo")
    assert np.array_equal(joints[0], TPOSE)


@pytest.mark.parametrize("preset", sorted(RIGS))
def test_real_rig_names_detect_their_preset(preset):
    assert detect_preset(RIGS[preset]) == preset


def assert_anatomically_sane(joints: np.ndarray) -> None:
    """Left joints at +x, right at -x, spine rising to the head, legs descending, arms reaching outward."""
    for left, right in zip(LEFT_CHAIN, RIGHT_CHAIN):
        assert joints[left, 0] > 0.03 and joints[right, 0] < -0.03
        assert np.allclose(joints[left] * (-1, 1, 1), joints[right])  # TPOSE is symmetric
    assert np.all(np.diff(joints[[0, 3, 6, 9, 12, 15], 1]) > 0)
    for hip, knee, ankle, foot in ((1, 4, 7, 10), (2, 5, 8, 11)):
        assert joints[hip, 1] > joints[knee, 1] > joints[ankle, 1] and joints[foot, 2] > joints[ankle, 2]
    for chain in ((13, 16, 18, 20), (14, 17, 19, 21)):
        assert np.all(np.diff(np.abs(joints[list(chain), 0])) > 0)
    bones = np.linalg.norm(joints[1:] - joints[list(SMPL22_PARENTS[1:])], axis=-1)
    assert bones.min() > 0.02 and bones.max() < 0.6


@pytest.mark.parametrize("preset", sorted(RIGS))
def test_presets_build_sane_skeletons_on_synthetic_rigs(preset):
    names = RIGS[preset]
    joints = apply_joint_map(synthetic_rig(preset, names), names, preset)
    assert joints.shape == (3, 22, 3)
    assert_anatomically_sane(joints[0])
    for smpl_index, entry in enumerate(PRESETS[preset]):
        expected = TPOSE[smpl_index]
        if isinstance(entry, Lerp):
            a, b = (TPOSE[PRESETS[preset].index(n)] for n in (entry.a, entry.b))
            expected = a + entry.t * (b - a)
        assert np.allclose(joints[:, smpl_index], expected), (preset, entry)


def test_ab_chest_rig_is_detected_and_its_collars_sit_between_neck_and_shoulders():
    assert detect_preset(AB_CHEST) == "ab_chest"
    positions = np.zeros((1, len(AB_CHEST), 3))
    positions[0, AB_CHEST.index("LeftCollar")] = [0.0, 1.5, 0.0]
    positions[0, AB_CHEST.index("LeftShoulder")] = [0.2, 1.5, 0.0]
    joints = apply_joint_map(positions, AB_CHEST, "ab_chest")
    np.testing.assert_allclose(joints[0, 13], [0.1, 1.5, 0.0])  # SMPL left collar


def test_interpolated_joints_follow_readme_table():
    assert PRESETS["bandai"][6] == Lerp("Spine", "Chest", 0.5)
    assert PRESETS["cmu"][9] == Lerp("Spine1", "Neck1", 0.35)
    assert PRESETS["cmu"][13] == Lerp("Spine1", "LeftArm", 0.4)
    names = RIGS["cmu"]
    joints = apply_joint_map(synthetic_rig("cmu", names), names, "cmu")[0]
    spine1, left_arm = TPOSE[6], TPOSE[16]  # cgspeed Spine1 -> SMPL spine2, LeftArm -> left shoulder
    assert np.allclose(joints[13], spine1 + 0.4 * (left_arm - spine1))


def test_missing_joint_is_named_in_the_error():
    names = [f"mixamorig:{n}" for n in MIXAMO if n != "LeftToeBase"]
    with pytest.raises(ValueError, match="closest is 'mixamo', missing \\['LeftToeBase'\\]"):
        detect_preset(names)
    with pytest.raises(ValueError, match="mixamorig:LeftToeBase"):
        apply_joint_map(np.zeros((1, len(names), 3)), names, "mixamo")
    with pytest.raises(ValueError, match="unknown joint-map preset 'smplx'"):
        apply_joint_map(np.zeros((1, len(names), 3)), names, "smplx")
    with pytest.raises(ValueError, match=r"expected \[T, J, 3\]"):
        apply_joint_map(np.zeros((1, 3, 3)), names, "mixamo")
