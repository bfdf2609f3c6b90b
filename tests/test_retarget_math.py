"""Retargeting math of the Blender add-on without Blender: presets, detection, rest-relative transfer, root motion."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from blender_addon import retarget, smpl_math  # noqa: E402
from blender_addon.smpl_math import JOINT_NAMES, PARENTS  # noqa: E402

MIXAMO = (
    "Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "HeadTop_End",
    "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "RightShoulder", "RightArm", "RightForeArm", "RightHand",
    "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase", "RightUpLeg", "RightLeg", "RightFoot", "RightToeBase",
)
RIGIFY_DEF = (
    "root", "DEF-spine", "DEF-spine.001", "DEF-spine.002", "DEF-spine.003", "DEF-spine.004", "DEF-spine.005",
    "DEF-spine.006", "DEF-shoulder.L", "DEF-upper_arm.L", "DEF-upper_arm.L.001", "DEF-forearm.L",
    "DEF-forearm.L.001", "DEF-hand.L", "DEF-shoulder.R", "DEF-upper_arm.R", "DEF-forearm.R", "DEF-hand.R",
    "DEF-thigh.L", "DEF-thigh.L.001", "DEF-shin.L", "DEF-foot.L", "DEF-toe.L",
    "DEF-thigh.R", "DEF-shin.R", "DEF-foot.R", "DEF-toe.R",
)
RIGIFY_FK = (
    "root", "torso", "hips", "chest", "spine_fk", "spine_fk.001", "spine_fk.002", "spine_fk.003", "neck", "head",
    "shoulder.L", "upper_arm_fk.L", "forearm_fk.L", "hand_fk.L", "upper_arm_ik.L", "hand_ik.L",
    "shoulder.R", "upper_arm_fk.R", "forearm_fk.R", "hand_fk.R", "thigh_fk.L", "shin_fk.L", "foot_fk.L", "toe.L",
    "thigh_fk.R", "shin_fk.R", "foot_fk.R", "toe.R", "foot_ik.L", "foot_ik.R",
) + tuple("DEF-" + n for n in RIGIFY_DEF[1:])
UE5 = (
    "root", "pelvis", "spine_01", "spine_02", "spine_03", "spine_04", "spine_05", "neck_01", "neck_02", "head",
    "clavicle_l", "upperarm_l", "upperarm_twist_01_l", "lowerarm_l", "hand_l", "index_metacarpal_l", "ik_hand_l",
    "clavicle_r", "upperarm_r", "lowerarm_r", "hand_r", "thigh_l", "calf_l", "foot_l", "ball_l",
    "thigh_r", "calf_r", "foot_r", "ball_r",
)


# --- a small synthetic world ----------------------------------------------------------------------------------------


def smpl_tpose_yup() -> np.ndarray:
    """An SMPL-like T-pose [24,3] (Y-up, facing +Z, left +x), feet on the ground."""
    offsets = np.array(
        [
            [0, 0, 0], [0.06, -0.09, 0.0], [-0.06, -0.09, 0.0], [0, 0.11, -0.03], [0.0, -0.39, 0.0],
            [0.0, -0.39, 0.0], [0, 0.14, 0.02], [0.0, -0.42, -0.02], [0.0, -0.42, -0.02], [0, 0.06, 0.02],
            [0, -0.05, 0.12], [0, -0.05, 0.12], [0, 0.21, -0.02], [0.07, 0.11, -0.01], [-0.07, 0.11, -0.01],
            [0, 0.09, 0.05], [0.11, 0.0, 0.0], [-0.11, 0.0, 0.0], [0.26, 0.0, 0.0], [-0.26, 0.0, 0.0],
            [0.25, 0.0, 0.0], [-0.25, 0.0, 0.0], [0.085, 0.0, 0.0], [-0.085, 0.0, 0.0],
        ]
    )
    joints = np.zeros((24, 3))
    for j in range(1, 24):
        joints[j] = joints[PARENTS[j]] + offsets[j]
    joints[:, 1] -= joints[:, 1].min()
    return joints


def random_motion(frames: int, seed: int, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Random SMPL pose [T,24,3] (smooth in time) and a forward walk with sway as translation [T,3] (Y-up)."""
    rng = np.random.default_rng(seed)
    keys = rng.normal(scale=scale, size=(4, 24, 3))
    t = np.linspace(0.0, 1.0, frames)
    knots = np.linspace(0.0, 1.0, len(keys))
    pose = np.stack([np.stack([np.interp(t, knots, keys[:, j, k]) for k in range(3)], -1) for j in range(24)], 1)
    transl = np.stack([0.05 * np.sin(2 * np.pi * 2 * t), 0.02 * np.sin(2 * np.pi * 4 * t), 1.2 * t], axis=-1)
    return pose, transl


def bone_frame(head: np.ndarray, tail: np.ndarray, roll: float) -> np.ndarray:
    """Rest matrix [4,4] of a bone: Y along head->tail, rolled about Y (any roll convention serves the maths)."""
    y = (tail - head) / np.linalg.norm(tail - head)
    base = smpl_math.rotation_between(np.array([0.0, 1.0, 0.0]), y)
    c, s = np.cos(roll), np.sin(roll)
    spin = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    matrix = np.eye(4)
    matrix[:3, :3] = base @ spin
    matrix[:3, 3] = head
    return matrix


def make_rig(bones: list[tuple[str, str | None, tuple, tuple]], seed: int, world: np.ndarray | None = None):
    """TargetRig from (name, parent, head, tail) in armature space with random bone rolls."""
    rng = np.random.default_rng(seed)
    names = tuple(b[0] for b in bones)
    parents = tuple(names.index(b[1]) if b[1] else -1 for b in bones)
    rolls = rng.uniform(-np.pi, np.pi, size=len(bones))
    rest = np.stack([bone_frame(np.array(h, float), np.array(t, float), r) for (*_, h, t), r in zip(bones, rolls)])
    tails = np.array([t for *_, t in bones], dtype=float)
    return retarget.TargetRig(names, parents, rest, tails, np.eye(4) if world is None else world)


def _rotate_arm(points: list[tuple], pivot: tuple, degrees: float) -> list[tuple]:
    """Points turned about the forward (Y) axis through `pivot` (arms down for positive angles on the left)."""
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return [tuple(rot @ (np.array(p) - pivot) + pivot) for p in points]


def mixamo_bones(a_pose: bool, prefix: str = "mixamorig:") -> list[tuple[str, str | None, tuple, tuple]]:
    """A Mixamo-named skeleton (Z-up, facing -Y), in T-pose or with the arms 45 degrees down."""
    spine = [("Hips", (0, 0, 1.0)), ("Spine", (0, 0.01, 1.1)), ("Spine1", (0, 0.0, 1.22)), ("Spine2", (0, -0.01, 1.34)),
             ("Neck", (0, 0.0, 1.5)), ("Head", (0, -0.02, 1.6)), ("HeadTop_End", (0, -0.02, 1.8))]
    bones = []
    for k, (name, head) in enumerate(spine[:-1]):
        bones.append((name, spine[k - 1][0] if k else None, head, spine[k + 1][1]))
    for side, sign in (("Left", 1), ("Right", -1)):
        arm = [(sign * 0.05, 0.0, 1.45), (sign * 0.17, 0.0, 1.45), (sign * 0.45, 0.01, 1.45), (sign * 0.72, 0.0, 1.45),
               (sign * 0.9, 0.0, 1.45)]
        if a_pose:
            arm[1:] = _rotate_arm(arm[1:], np.array(arm[1]), 45.0 * sign)
        names = [f"{side}Shoulder", f"{side}Arm", f"{side}ForeArm", f"{side}Hand"]
        parents = ["Spine2"] + names[:-1]
        bones += [(n, p, arm[k], arm[k + 1]) for k, (n, p) in enumerate(zip(names, parents))]
        leg = [(sign * 0.09, 0.0, 0.95), (sign * 0.09, -0.01, 0.52), (sign * 0.09, 0.02, 0.09),
               (sign * 0.09, -0.1, 0.02), (sign * 0.09, -0.18, 0.02)]
        names = [f"{side}UpLeg", f"{side}Leg", f"{side}Foot", f"{side}ToeBase"]
        parents = ["Hips"] + names[:-1]
        bones += [(n, p, leg[k], leg[k + 1]) for k, (n, p) in enumerate(zip(names, parents))]
    return [(prefix + n, prefix + p if p else None, h, t) for n, p, h, t in bones]


def smpl_like_bones(rest_zup: np.ndarray) -> list[tuple[str, str | None, tuple, tuple]]:
    """The SMPL armature the add-on builds: bones along +Z from each joint, roll 0 (rolls set below)."""
    return [
        (JOINT_NAMES[j], JOINT_NAMES[PARENTS[j]] if j else None, tuple(rest_zup[j]), tuple(rest_zup[j] + (0, 0, 0.1)))
        for j in range(24)
    ]


def pose_rig(rig: retarget.TargetRig, result: retarget.RetargetResult) -> tuple[np.ndarray, np.ndarray]:
    """World heads and tails [T,B,3] of the posed rig, chained the way Blender does (independent of retarget)."""
    frames = len(next(iter(result.rotations.values())))
    pose = np.empty((frames, len(rig.names), 4, 4))
    done: set[int] = set()
    while len(done) < len(rig.names):
        for b, p in enumerate(rig.parents):
            if b in done or (p >= 0 and p not in done):
                continue
            basis = np.tile(np.eye(4), (frames, 1, 1))
            if rig.names[b] in result.rotations:
                basis[:, :3, :3] = smpl_math.quat_to_matrix(result.rotations[rig.names[b]])
            if rig.names[b] in result.locations:
                basis[:, :3, 3] = result.locations[rig.names[b]]
            parent = np.eye(4) if p < 0 else pose[:, p] @ np.linalg.inv(rig.rest[p])
            pose[:, b] = parent @ rig.rest[b] @ basis
            done.add(b)
    world = rig.world @ pose
    tails_h = np.concatenate([rig.tails, np.ones((len(rig.names), 1))], axis=1)
    tails_local = np.einsum("bij,bj->bi", np.linalg.inv(rig.rest), tails_h)
    heads = world[..., :3, 3]
    tails = np.einsum("tbij,bj->tbi", world, tails_local)[..., :3]
    return heads, tails


def direction_errors(rig, mapping, result, joints_zup: np.ndarray) -> np.ndarray:
    """Angle (degrees) per frame and mapped bone between the target bone and the source bone it follows."""
    heads, tails = pose_rig(rig, result)
    index = {n: b for b, n in enumerate(rig.names)}
    errors = []
    for role, bone in mapping.items():
        j = JOINT_NAMES.index(role) if role in JOINT_NAMES else None
        if j is None or j not in retarget.DIRECTION_CHILD:
            continue
        c = retarget.DIRECTION_CHILD[j]
        b = index[bone]
        child_bone = mapping.get(JOINT_NAMES[c])
        target = heads[:, index[child_bone]] - heads[:, b] if child_bone else tails[:, b] - heads[:, b]
        source = joints_zup[:, c] - joints_zup[:, j]
        sin = np.linalg.norm(np.cross(target, source), axis=-1)
        errors.append(np.degrees(np.arctan2(sin, (target * source).sum(-1))))
    return np.stack(errors, axis=1)


def source_and_joints(frames: int = 24, seed: int = 0):
    """A random SMPL motion as SourceMotion, its joints in Blender axes, and the raw pose/transl/rest."""
    rest = smpl_tpose_yup()
    pose, transl = random_motion(frames, seed)
    source = retarget.source_from_smpl(pose, transl, rest, fps=20.0)
    joints, _ = smpl_math.forward_kinematics(pose, transl, rest)
    return source, smpl_math.points_to_z_up(joints), pose, transl, rest


# --- presets and detection ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["mixamorig:", "mixamorig7:", "Neo_", ""])
def test_mixamo_is_detected_under_any_prefix(prefix: str) -> None:
    names = [prefix + n for n in MIXAMO]
    assert retarget.detect_prefix("mixamo", names) == prefix
    preset, mapping = retarget.auto_mapping(names)
    assert preset == "mixamo"
    assert len(mapping) == 22
    assert mapping["left_shoulder"] == prefix + "LeftArm"
    assert mapping["right_collar"] == prefix + "RightShoulder"
    assert mapping["spine3"] == prefix + "Spine2"


def test_rigify_deform_current_and_old_spine_names() -> None:
    preset, mapping = retarget.auto_mapping(RIGIFY_DEF)
    assert preset == "rigify_def"
    assert mapping["pelvis"] == "DEF-spine" and mapping["spine1"] == "DEF-spine.001"
    assert mapping["head"] == "DEF-spine.006" and mapping["root"] == "root"
    assert mapping["left_shoulder"] == "DEF-upper_arm.L" and mapping["left_foot"] == "DEF-toe.L"
    old = ["DEF-hips", "DEF-spine", "DEF-chest", "DEF-neck", "DEF-head", "DEF-thigh.01.L", "DEF-shin.01.L",
           "DEF-foot.L", "DEF-upper_arm.01.L", "DEF-forearm.01.L", "DEF-hand.L", "DEF-shoulder.L",
           "DEF-thigh.01.R", "DEF-shin.01.R", "DEF-foot.R", "DEF-upper_arm.01.R", "DEF-forearm.01.R", "DEF-hand.R"]
    mapping = retarget.preset_mapping("rigify_def", old)
    assert mapping["pelvis"] == "DEF-hips" and mapping["spine1"] == "DEF-spine" and mapping["spine3"] == "DEF-chest"
    assert retarget.detect_preset(old) == "rigify_def"


def test_generated_rigify_prefers_fk_controls() -> None:
    preset, mapping = retarget.auto_mapping(RIGIFY_FK)
    assert preset == "rigify"
    assert mapping["left_elbow"] == "forearm_fk.L" and mapping["pelvis"] == "torso" and mapping["root"] == "root"


def test_ue5_and_smpl_presets() -> None:
    preset, mapping = retarget.auto_mapping(UE5)
    assert preset == "ue5"
    assert (mapping["spine1"], mapping["spine2"], mapping["spine3"]) == ("spine_02", "spine_04", "spine_05")
    assert mapping["root"] == "root" and mapping["left_foot"] == "ball_l"
    assert retarget.auto_mapping(JOINT_NAMES) == ("smpl", {n: n for n in JOINT_NAMES})
    fbx_names = ["m_avg_" + n for n in ("Pelvis", "L_Hip", "R_Hip", "Spine1", "L_Knee", "R_Knee", "Spine2", "L_Ankle",
                                         "R_Ankle", "Spine3", "L_Foot", "R_Foot", "Neck", "L_Collar", "R_Collar",
                                         "Head", "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist",
                                         "R_Wrist", "L_Hand", "R_Hand")]
    preset, mapping = retarget.auto_mapping(fbx_names)
    assert preset == "smpl" and len(mapping) == 24 and mapping["left_elbow"] == "m_avg_L_Elbow"


def test_unknown_rig_is_not_detected() -> None:
    names = ["Bone", "Bone.001", "Bone.002", "Tail", "Wing.L", "Wing.R"]
    assert retarget.detect_preset(names) is None
    with pytest.raises(ValueError, match="map the bones by hand"):
        retarget.auto_mapping(names)


def test_mapping_editing_and_validation(tmp_path: Path) -> None:
    names = ["mixamorig:" + n for n in MIXAMO]
    _, mapping = retarget.auto_mapping(names)
    edited = retarget.set_mapping_bone(mapping, "head", "mixamorig:HeadTop_End")
    assert edited["head"] == "mixamorig:HeadTop_End" and mapping["head"] == "mixamorig:Head"
    moved = retarget.set_mapping_bone(edited, "neck", "mixamorig:HeadTop_End")  # a bone drives one role only
    assert moved["neck"] == "mixamorig:HeadTop_End" and "head" not in moved
    assert "neck" not in retarget.set_mapping_bone(moved, "neck", None)
    with pytest.raises(ValueError, match="unknown role"):
        retarget.set_mapping_bone(mapping, "tail", "mixamorig:Hips")
    retarget.validate_mapping(mapping, names)
    bad = dict(mapping, left_hand="mixamorig:Hips", spine1="NoSuchBone")
    del bad["pelvis"]
    with pytest.raises(ValueError) as err:
        retarget.validate_mapping(bad, names)
    assert "NoSuchBone" in str(err.value) and "'pelvis'" in str(err.value)

    path = tmp_path / "mixamo.json"
    retarget.save_mapping(path, mapping)
    assert retarget.load_mapping(path) == mapping
    path.write_text(json.dumps({"pelvis": "Hips", "wing": "Bone"}))
    with pytest.raises(ValueError, match="unknown roles"):
        retarget.load_mapping(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"mixamo.json:1"):
        retarget.load_mapping(path)


# --- SMPL maths -----------------------------------------------------------------------------------------------------


def test_axes_and_rotations() -> None:
    up, forward, left = np.eye(3)[1], np.eye(3)[2], np.eye(3)[0]
    converted = smpl_math.points_to_z_up(np.stack([up, forward, left]))
    np.testing.assert_allclose(converted, [[0, 0, 1], [0, -1, 0], [1, 0, 0]])
    rng = np.random.default_rng(3)
    aa = rng.normal(size=(50, 3))
    rot = smpl_math.axis_angle_to_matrix(aa)
    v = rng.normal(size=(50, 3))
    # Rotating then converting equals converting then rotating with the converted matrix.
    np.testing.assert_allclose(
        smpl_math.points_to_z_up(np.einsum("nij,nj->ni", rot, v)),
        np.einsum("nij,nj->ni", smpl_math.rotations_to_z_up(rot), smpl_math.points_to_z_up(v)),
        atol=1e-12,
    )
    np.testing.assert_allclose(smpl_math.quat_to_matrix(smpl_math.matrix_to_quat(rot)), rot, atol=1e-12)
    # Rodrigues check of axis-angle -> matrix.
    angle = np.linalg.norm(aa[0])
    k = aa[0] / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    np.testing.assert_allclose(rot[0], np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx, atol=1e-12)


def test_forward_kinematics_matches_the_backend() -> None:
    backend = pytest.importorskip("safemotion.motion.smpl")
    rest = smpl_tpose_yup()
    pose, transl = random_motion(12, seed=5, scale=0.8)
    joints, world = smpl_math.forward_kinematics(pose, transl, rest)
    np.testing.assert_allclose(joints, backend.smpl_forward_kinematics(pose, transl, rest), atol=1e-12)
    np.testing.assert_allclose(world, backend.smpl_global_rotations(pose), atol=1e-12)


def test_bad_motion_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"\[T, 24, 3\]"):
        smpl_math.forward_kinematics(np.zeros((5, 22, 3)), np.zeros((5, 3)), smpl_tpose_yup())
    with pytest.raises(ValueError, match="transl"):
        smpl_math.forward_kinematics(np.zeros((5, 24, 3)), np.zeros((4, 3)), smpl_tpose_yup())


# --- rest-relative transfer -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("a_pose", [False, True])
def test_transfer_recovers_source_directions_on_mixamo(a_pose: bool) -> None:
    source, joints, *_ = source_and_joints()
    rig = make_rig(mixamo_bones(a_pose), seed=1)
    _, mapping = retarget.auto_mapping(rig.names)
    result = retarget.retarget(source, retarget.fit_rig(rig, mapping))
    errors = direction_errors(rig, mapping, result, joints)
    assert errors.shape[1] == 19  # every mapped bone except the toes and the head
    assert errors.max() < 1e-6


def test_transfer_is_independent_of_object_transform_and_rolls() -> None:
    source, joints, *_ = source_and_joints(seed=2)
    # Rig object turned 90 degrees about Z (it faces +X at rest), moved and scaled: the character still follows.
    world = np.eye(4)
    world[:3, :3] = 0.5 * np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    world[:3, 3] = (3.0, -2.0, 0.5)
    rigs = [make_rig(mixamo_bones(True), seed=s, world=world) for s in (4, 5)]
    mapping = retarget.auto_mapping(rigs[0].names)[1]
    results = [retarget.retarget(source, retarget.fit_rig(rig, mapping)) for rig in rigs]
    for rig, result in zip(rigs, results):
        assert direction_errors(rig, mapping, result, joints).max() < 1e-6
    # Different rolls change the local quaternions but not the posed bones.
    heads = [pose_rig(rig, result)[0] for rig, result in zip(rigs, results)]
    np.testing.assert_allclose(heads[0], heads[1], atol=1e-9)
    bone = mapping["left_elbow"]
    assert not np.allclose(np.abs(results[0].rotations[bone]), np.abs(results[1].rotations[bone]), atol=1e-3)


def test_smpl_armature_gets_the_smpl_pose_back() -> None:
    source, _, pose, transl, rest = source_and_joints(seed=7)
    rest_zup = smpl_math.points_to_z_up(rest)
    bones = smpl_like_bones(rest_zup)
    names = tuple(b[0] for b in bones)
    parents = tuple(PARENTS)
    matrices = np.tile(np.eye(4), (24, 1, 1))
    matrices[:, :3, :3] = smpl_math.Y_UP_TO_Z_UP  # a bone along +Z with roll 0
    matrices[:, :3, 3] = rest_zup
    rig = retarget.TargetRig(names, parents, matrices, rest_zup + (0, 0, 0.1))
    result = retarget.retarget(source, retarget.fit_rig(rig, {n: n for n in names}))
    expected = smpl_math.quat_continuous(smpl_math.axis_angle_to_quat(pose))
    for j, name in enumerate(names):
        if j in retarget.DIRECTION_CHILD or j == 0:
            got = result.rotations[name]
            assert np.allclose(np.abs((got * expected[:, j]).sum(-1)), 1.0, atol=1e-9), name
    # Same rest skeleton, so hips scale 1 and the pelvis location is the SMPL translation in bone axes (= Y-up).
    assert result.scale == pytest.approx(1.0)
    np.testing.assert_allclose(result.locations["pelvis"], transl, atol=1e-9)


def test_rigify_style_rig_with_root_bone() -> None:
    source, joints, *_ = source_and_joints(seed=8)
    bones = [("root", None, (0, 0, 0), (0, 0.3, 0)), ("DEF-spine", "root", (0, 0.02, 1.0), (0, 0.0, 1.12)),
             ("DEF-spine.001", "DEF-spine", (0, 0.0, 1.12), (0, 0.01, 1.25)),
             ("DEF-spine.002", "DEF-spine.001", (0, 0.01, 1.25), (0, 0.02, 1.38)),
             ("DEF-spine.003", "DEF-spine.002", (0, 0.02, 1.38), (0, 0.0, 1.5)),
             ("DEF-spine.004", "DEF-spine.003", (0, 0.0, 1.5), (0, -0.01, 1.58)),
             ("DEF-spine.005", "DEF-spine.004", (0, -0.01, 1.58), (0, -0.02, 1.64)),
             ("DEF-spine.006", "DEF-spine.005", (0, -0.02, 1.64), (0, -0.02, 1.85))]
    for s, sign in (("L", 1), ("R", -1)):
        x = sign
        bones += [(f"DEF-shoulder.{s}", "DEF-spine.003", (x * 0.02, -0.05, 1.46), (x * 0.17, 0.03, 1.46)),
                  (f"DEF-upper_arm.{s}", f"DEF-shoulder.{s}", (x * 0.18, 0.03, 1.45), (x * 0.3, 0.05, 1.3)),
                  (f"DEF-upper_arm.{s}.001", f"DEF-upper_arm.{s}", (x * 0.3, 0.05, 1.3), (x * 0.4, 0.07, 1.15)),
                  (f"DEF-forearm.{s}", f"DEF-upper_arm.{s}.001", (x * 0.4, 0.07, 1.15), (x * 0.48, 0.0, 1.0)),
                  (f"DEF-forearm.{s}.001", f"DEF-forearm.{s}", (x * 0.48, 0.0, 1.0), (x * 0.55, -0.06, 0.87)),
                  (f"DEF-hand.{s}", f"DEF-forearm.{s}.001", (x * 0.55, -0.06, 0.87), (x * 0.58, -0.08, 0.78)),
                  (f"DEF-thigh.{s}", "DEF-spine", (x * 0.1, 0.01, 0.98), (x * 0.1, -0.01, 0.75)),
                  (f"DEF-thigh.{s}.001", f"DEF-thigh.{s}", (x * 0.1, -0.01, 0.75), (x * 0.1, -0.03, 0.52)),
                  (f"DEF-shin.{s}", f"DEF-thigh.{s}.001", (x * 0.1, -0.03, 0.52), (x * 0.1, 0.03, 0.08)),
                  (f"DEF-foot.{s}", f"DEF-shin.{s}", (x * 0.1, 0.03, 0.08), (x * 0.1, -0.1, 0.01)),
                  (f"DEF-toe.{s}", f"DEF-foot.{s}", (x * 0.1, -0.1, 0.01), (x * 0.1, -0.18, 0.01))]
    rig = make_rig(bones, seed=9)
    preset, mapping = retarget.auto_mapping(rig.names)
    assert preset == "rigify_def"
    result = retarget.retarget(source, retarget.fit_rig(rig, mapping))
    assert direction_errors(rig, mapping, result, joints).max() < 1e-6
    heads, tails = pose_rig(rig, result)
    hips = rig.names.index("DEF-spine")
    expected_hips = rig.rest[hips, :3, 3] + (source.pelvis - source.rest_joints[0]) * result.scale
    np.testing.assert_allclose(heads[:, hips], expected_hips, atol=1e-9)
    # The root carries the ground travel and the heading; its height stays 0.
    root = heads[:, rig.names.index("root")]
    np.testing.assert_allclose(root[:, :2], (source.pelvis - source.rest_joints[0])[:, :2] * result.scale, atol=1e-9)
    np.testing.assert_allclose(root[:, 2], 0.0, atol=1e-12)
    # Its heading turns with the pelvis: the source's forward axis (-Y at rest) seen from above.
    forward = source.rotations[:, 0] @ np.array([0.0, -1.0, 0.0])
    pelvis_yaw = np.arctan2(forward[:, 1], forward[:, 0]) + np.pi / 2
    root_dir = tails[:, rig.names.index("root")] - root
    root_yaw = np.arctan2(root_dir[:, 1], root_dir[:, 0]) - np.pi / 2  # the root bone points +Y at rest
    np.testing.assert_allclose(np.angle(np.exp(1j * (root_yaw - pelvis_yaw))), 0.0, atol=1e-9)
    np.testing.assert_allclose(root_dir[:, 2], 0.0, atol=1e-12)
    assert np.ptp(pelvis_yaw) > 0.3
    # Without the root option the root stays at rest and the hips carry everything.
    plain = retarget.retarget(source, retarget.fit_rig(rig, mapping),
                              retarget.RetargetOptions(use_root_bone=False))
    assert "root" not in plain.rotations
    np.testing.assert_allclose(pose_rig(rig, plain)[0][:, hips], expected_hips, atol=1e-9)


# --- root motion ----------------------------------------------------------------------------------------------------


def test_hip_height_scaling() -> None:
    source, *_ = source_and_joints(seed=11)
    small = make_rig(mixamo_bones(False), seed=1)
    big_bones = [(n, p, tuple(2 * np.array(h)), tuple(2 * np.array(t))) for n, p, h, t in mixamo_bones(False)]
    big = make_rig(big_bones, seed=1)
    mapping = retarget.auto_mapping(small.names)[1]
    r_small = retarget.retarget(source, retarget.fit_rig(small, mapping))
    r_big = retarget.retarget(source, retarget.fit_rig(big, mapping))
    assert r_big.scale == pytest.approx(2 * r_small.scale)
    # Mixamo hips at 1.0 m above the toes at 0.02 m vs the SMPL pelvis height above its lowest joint.
    rest = source.rest_joints
    assert r_small.scale == pytest.approx((1.0 - 0.02) / (rest[0, 2] - rest[:, 2].min()))
    hips = small.names.index("mixamorig:Hips")
    travel_small = pose_rig(small, r_small)[0][:, hips] - small.rest[hips, :3, 3]
    travel_big = pose_rig(big, r_big)[0][:, hips] - big.rest[hips, :3, 3]
    np.testing.assert_allclose(travel_big, 2 * travel_small, atol=1e-9)
    unscaled = retarget.retarget(source, retarget.fit_rig(big, mapping),
                                 retarget.RetargetOptions(scale_root_motion=False))
    np.testing.assert_allclose(
        pose_rig(big, unscaled)[0][:, hips] - big.rest[hips, :3, 3], source.pelvis - rest[0], atol=1e-9
    )


def test_in_place_removes_travel_and_keeps_sway() -> None:
    frames = 80
    rest = smpl_tpose_yup()
    t = np.arange(frames) / 20.0
    pose = np.zeros((frames, 24, 3))
    sway = 0.04 * np.sin(2 * np.pi * 2.0 * t)  # 2 Hz side to side
    transl = np.stack([sway, 0.01 * np.sin(2 * np.pi * 4.0 * t), 1.3 * t], axis=-1)  # 1.3 m/s forward
    source = retarget.source_from_smpl(pose, transl, rest, fps=20.0)
    rig = make_rig(mixamo_bones(False), seed=3)
    mapping = retarget.auto_mapping(rig.names)[1]
    options = retarget.RetargetOptions(in_place=True, scale_root_motion=False, in_place_window=1.0)
    result = retarget.retarget(source, retarget.fit_rig(rig, mapping), options)
    hips = rig.names.index("mixamorig:Hips")
    travel = pose_rig(rig, result)[0][:, hips] - rig.rest[hips, :3, 3]
    # Forward travel (Blender -Y) is gone exactly; the side sway stays: inside the clip the 21-frame fit of a
    # 10-frame-period wave leaves < 5% of its amplitude, in the first and last half second (windows held inside the
    # clip) the fitted slope of 2.1 periods leaves up to 40%. The height is untouched.
    assert np.abs(travel[:, 1]).max() < 1e-9
    assert np.abs(travel[10:-10, 0] - sway[10:-10]).max() < 0.002
    assert np.abs(travel[:, 0] - sway).max() < 0.017
    np.testing.assert_allclose(travel[:, 2], transl[:, 1], atol=1e-9)
    moving = retarget.retarget(source, retarget.fit_rig(rig, mapping),
                               retarget.RetargetOptions(scale_root_motion=False))
    moved = pose_rig(rig, moving)[0][:, hips] - rig.rest[hips, :3, 3]
    assert moved[-1, 1] == pytest.approx(-1.3 * t[-1])


def test_quaternions_are_continuous() -> None:
    frames = 60
    rest = smpl_tpose_yup()
    pose = np.zeros((frames, 24, 3))
    pose[:, 0, 1] = np.linspace(0.0, 4 * np.pi, frames)  # two full turns about the vertical axis
    pose[:, 18, 1] = np.linspace(0.0, -3 * np.pi, frames)
    source = retarget.source_from_smpl(pose, np.zeros((frames, 3)), rest)
    rig = make_rig(mixamo_bones(False), seed=6)
    mapping = retarget.auto_mapping(rig.names)[1]
    result = retarget.retarget(source, retarget.fit_rig(rig, mapping))
    for name, q in result.rotations.items():
        assert ((q[1:] * q[:-1]).sum(-1) > 0).all(), name
    hips = result.rotations["mixamorig:Hips"]
    assert (hips[:, 0] < 0).any()  # past one turn the continuous quaternion has w < 0
    assert direction_errors(rig, mapping, result, smpl_math.points_to_z_up(
        smpl_math.forward_kinematics(pose, np.zeros((frames, 3)), rest)[0])).max() < 1e-6


# --- name matcher, editor helpers, orientation, evaluated-pose correction (issue 17) ------------------------------

GERMAN = ("Becken", "Wirbelsäule", "Wirbelsäule.001", "Brust", "Hals", "Kopf", "Schulter.L", "Oberarm.L",
          "Unterarm.L", "Hand.L", "Schulter.R", "Oberarm.R", "Unterarm.R", "Hand.R", "Oberschenkel.L",
          "Unterschenkel.L", "Fuß.L", "Zehen.L", "Oberschenkel.R", "Unterschenkel.R", "Fuß.R", "Zehen.R")


def test_name_matcher_maps_german_names_and_side_spellings() -> None:
    preset, mapping = retarget.auto_mapping(GERMAN)
    assert preset == retarget.FUZZY and len(mapping) == 22 and not retarget.missing_roles(mapping)
    assert (mapping["spine1"], mapping["spine2"], mapping["spine3"]) == ("Wirbelsäule", "Wirbelsäule.001", "Brust")
    assert mapping["left_ankle"] == "Fuß.L" and mapping["right_collar"] == "Schulter.R"
    assert mapping["left_shoulder"] == "Oberarm.L" and mapping["left_foot"] == "Zehen.L"
    sides = ["Hips", "pelvis.L", "L_Thigh", "thigh_r", "LeftLeg", "Knie rechts", "bip01 L Clavicle",
             "ctrl:Right_Foot", "R_Hip", "Avant-bras_gauche", "muslo_izquierdo", "Coscia sinistra", "Mano.Derecha"]
    got = retarget.fuzzy_mapping(sides)
    assert got == {"pelvis": "Hips", "left_hip": "L_Thigh", "right_hip": "thigh_r", "left_knee": "LeftLeg",
                   "right_knee": "Knie rechts", "right_ankle": "ctrl:Right_Foot", "left_collar": "bip01 L Clavicle",
                   "left_elbow": "Avant-bras_gauche", "right_wrist": "Mano.Derecha"}
    # A sided hip bone is the hip joint only when no thigh is named.
    assert retarget.fuzzy_mapping(["R_Hip", "L_Hip"]) == {"left_hip": "L_Hip", "right_hip": "R_Hip"}
    assert retarget.fuzzy_mapping(["muslo_izquierdo", "Coscia sinistra"]) == {"left_hip": "muslo_izquierdo"}
    # Mixamo names through the matcher alone agree with the preset (twist, finger and end bones ignored).
    names = ["mixamorig:" + n for n in MIXAMO] + ["mixamorig:LeftHandIndex1", "mixamorig:LeftToe_End"]
    assert retarget.fill_mapping("FUZZY", names) == retarget.fill_mapping("mixamo", names)
    assert retarget.fill_mapping("AUTO", UE5) == retarget.preset_mapping("ue5", UE5)


def test_generic_names_are_not_guessed() -> None:
    names = [f"bone_{k:03d}" for k in range(22)]
    assert retarget.fill_mapping("AUTO", names) == {}
    with pytest.raises(ValueError, match="recognises only 0 of 22 body joints: map the bones by hand"):
        retarget.auto_mapping(names)


def test_mapping_problems_name_every_bone() -> None:
    problems = retarget.mapping_problems({"left_hip": "bone_001", "right_hip": "bone_001", "spine1": "nope"},
                                         ["bone_001", "bone_002"])
    assert problems == ["the armature has no bone 'nope' (spine1)",
                        "bone 'bone_001' is chosen for 2 joints (left_hip, right_hip): pick one",
                        "no bone is mapped to 'pelvis' (the hips): choose one"]
    absent = retarget.mapping_problems({role: f"x{k}" for k, role in enumerate(retarget.BODY_ROLES[:5])}, [])
    assert absent[0] == "the armature has no bones 'x0' (pelvis), 'x1' (left_hip), 'x2' (right_hip) and 2 more"
    assert retarget.mapping_problems({"tail": "bone_001", "pelvis": "bone_002"}, ["bone_001", "bone_002"]) == [
        "unknown joint 'tail' (expected an SMPL joint name or 'root')"]
    assert retarget.missing_roles({"pelvis": "a", "head": "b"})[:3] == ["left_hip", "right_hip", "spine1"]


def test_rig_lying_down_is_refused() -> None:
    source, *_ = source_and_joints(seed=3)
    bones = mixamo_bones(False)
    lying = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)  # +Z (up) onto +Y: built with Y-up bones
    turned = [(n, p, tuple(lying.T @ np.array(h)), tuple(lying.T @ np.array(t))) for n, p, h, t in bones]
    rig = make_rig(turned, seed=4)
    mapping = retarget.auto_mapping(rig.names)[1]
    with pytest.raises(ValueError, match=r"does not stand upright.* 9\d degrees away from Blender's up axis"):
        retarget.fit_rig(rig, mapping)
    # The same rig with its object turned upright stands, and faces the source's way whatever its own facing.
    world = np.eye(4)
    world[:3, :3] = lying
    result = retarget.retarget(source, retarget.fit_rig(make_rig(turned, seed=4, world=world), mapping))
    upright = retarget.fit_rig(make_rig(bones, seed=4), mapping)
    assert result.scale == pytest.approx(retarget.retarget(source, upright).scale)


def test_hip_height_uses_heads_not_tails() -> None:
    source, *_ = source_and_joints(seed=5)
    bones = mixamo_bones(False)
    sunk = [(n, p, h, (t[0], t[1], -0.1) if n.endswith("ToeBase") else t) for n, p, h, t in bones]  # FBX-like tails
    mapping = retarget.auto_mapping([b[0] for b in bones])[1]
    plain = retarget.retarget(source, retarget.fit_rig(make_rig(bones, seed=1), mapping)).scale
    assert retarget.retarget(source, retarget.fit_rig(make_rig(sunk, seed=1), mapping)).scale == pytest.approx(plain)


def test_correct_bases_reaches_targets_through_a_hidden_parent() -> None:
    """A bone evaluated as P · basis with P unknown to the maths (a constraint): one step lands on the goal."""
    rng = np.random.default_rng(7)
    rotations = smpl_math.axis_angle_to_matrix(rng.normal(size=(3, 3, 3)))
    hidden, basis, goal = (np.tile(np.eye(4), (3, 1, 1)) for _ in range(3))
    hidden[:, :3, :3], basis[:, :3, :3], goal[:, :3, :3] = rotations
    hidden[:, :3, 3], basis[:, :3, 3], goal[:, :3, 3] = rng.normal(size=(3, 3, 3))
    located = np.array([True, False, True])
    fixed = retarget.correct_bases(basis, hidden @ basis, goal, located)
    angles, distances = retarget.pose_errors(hidden @ fixed, goal)
    assert angles.max() < 1e-6 and distances[located].max() < 1e-9
    np.testing.assert_allclose(fixed[1, :3, 3], basis[1, :3, 3])  # an unlocated bone keeps its location


def test_correct_bases_expects_the_ancestors_move() -> None:
    """Two bones in a chain behind a hidden parent: with the chain known, one step lands both; without, two."""
    rng = np.random.default_rng(8)

    def rigid(k: int) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = smpl_math.axis_angle_to_matrix(rng.normal(size=3))
        m[:3, 3] = rng.normal(size=3)
        return m

    hidden, link = rigid(0), rigid(1)
    bases = np.stack([rigid(2), rigid(3)])
    goal = np.stack([rigid(4), rigid(5)])

    def evaluate(b: np.ndarray) -> np.ndarray:
        first = hidden @ b[0]
        return np.stack([first, first @ link @ b[1]])

    located = np.array([True, True])
    one_step = retarget.correct_bases(bases, evaluate(bases), goal, located, np.array([-1, 0]))
    assert retarget.pose_errors(evaluate(one_step), goal)[0].max() < 1e-6
    jacobi = retarget.correct_bases(bases, evaluate(bases), goal, located)
    assert retarget.pose_errors(evaluate(jacobi), goal)[0][1] > 1.0
    with pytest.raises(ValueError, match="must come before it"):
        retarget.correct_bases(bases, evaluate(bases), goal, located, np.array([1, -1]))


def test_a_chosen_preset_that_does_not_fit_is_refused() -> None:
    # UE5 names share 'pelvis' and 'head' with SMPL's: two bones are not a fit.
    with pytest.raises(ValueError, match=r"'smpl' bone-name preset finds only 2 of its 24 bones.*choose 'ue5'"):
        retarget.chosen_preset_mapping("smpl", UE5)
    with pytest.raises(ValueError, match="no bone is mapped to 'pelvis'"):
        retarget.chosen_preset_mapping("ue5", MIXAMO)
    assert retarget.chosen_preset_mapping("ue5", UE5) == retarget.preset_mapping("ue5", UE5)
