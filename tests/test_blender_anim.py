"""Blender glue of the add-on on the real bpy module: SMPL armature, key writer, retargeting onto Mixamo/Rigify rigs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

bpy = pytest.importorskip("bpy")

from blender_addon import armature, keyframes, retarget, smpl_math  # noqa: E402
from blender_addon.smpl_math import JOINT_NAMES, PARENTS  # noqa: E402
from addon_support import rest_skeleton, synthetic_motion  # noqa: E402

FPS = 20


@pytest.fixture(autouse=True)
def empty_scene():
    """A factory-fresh empty scene at the motion's frame rate, for every test."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = FPS
    bpy.context.scene.render.fps_base = 1.0
    yield
    bpy.ops.wm.read_factory_settings(use_empty=True)


def evaluated_bones(obj, frames: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Bone names and evaluated world heads/tails [T,B,3] of an armature at each scene frame."""
    scene = bpy.context.scene
    bones = obj.pose.bones
    heads = np.empty((len(frames), len(bones), 3))
    tails = np.empty_like(heads)
    buffer = np.empty(len(bones) * 3, dtype=np.float32)
    for k, frame in enumerate(frames):
        scene.frame_set(int(frame))
        world = np.array(obj.matrix_world)
        for prop, out in (("head", heads), ("tail", tails)):
            bones.foreach_get(prop, buffer)
            out[k] = buffer.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    return [b.name for b in bones], heads, tails


def direction_errors(obj, mapping: dict[str, str], joints_zup: np.ndarray) -> np.ndarray:
    """Degrees between each mapped bone (head to the mapped child's head, else its own axis) and its source bone."""
    frames = np.arange(1, len(joints_zup) + 1)
    names, heads, tails = evaluated_bones(obj, frames)
    index = {n: b for b, n in enumerate(names)}
    errors = []
    for role, bone in mapping.items():
        if role not in JOINT_NAMES or JOINT_NAMES.index(role) not in retarget.DIRECTION_CHILD:
            continue
        j = JOINT_NAMES.index(role)
        c = retarget.DIRECTION_CHILD[j]
        child = mapping.get(JOINT_NAMES[c])
        b = index[bone]
        target = heads[:, index[child]] - heads[:, b] if child else tails[:, b] - heads[:, b]
        source = joints_zup[:, c] - joints_zup[:, j]
        sin = np.linalg.norm(np.cross(target, source), axis=-1)
        errors.append(np.degrees(np.arctan2(sin, (target * source).sum(-1))))
    return np.stack(errors, axis=1)


def source_joints(pose, transl, rest) -> np.ndarray:
    """Source joint positions [T,24,3] in Blender axes."""
    return smpl_math.points_to_z_up(smpl_math.forward_kinematics(pose, transl, rest)[0])


# --- SMPL armature --------------------------------------------------------------------------------------------------


def test_smpl_armature_follows_forward_kinematics() -> None:
    rest = rest_skeleton()
    pose, transl = synthetic_motion(24, seed=1)
    rig = armature.build_smpl_armature("SMPL", JOINT_NAMES, PARENTS, rest)
    bones = rig.data.bones
    assert sorted(b.name for b in bones) == sorted(JOINT_NAMES)
    for j, name in enumerate(JOINT_NAMES):
        assert (bones[name].parent.name if bones[name].parent else None) == (JOINT_NAMES[PARENTS[j]] if j else None)
        np.testing.assert_allclose(np.array(bones[name].matrix_local)[:3, :3], smpl_math.Y_UP_TO_Z_UP, atol=1e-6)
    np.testing.assert_allclose([bones[n].head_local for n in JOINT_NAMES], smpl_math.points_to_z_up(rest), atol=1e-6)

    action = armature.apply_smpl_motion(rig, pose, transl, fps=FPS, action_name="take")
    assert rig.animation_data.action == action
    joints, world = smpl_math.forward_kinematics(pose, transl, rest)
    names, heads, _ = evaluated_bones(rig, np.arange(1, 25))
    order = [names.index(n) for n in JOINT_NAMES]
    np.testing.assert_allclose(heads[:, order], smpl_math.points_to_z_up(joints), atol=1e-4)
    # Bone frames too (wrists, feet and head have no child joint to show their rotation): M · G_j.
    bpy.context.scene.frame_set(10)
    posed = np.array([np.array(rig.pose.bones[n].matrix)[:3, :3] for n in JOINT_NAMES])
    np.testing.assert_allclose(posed, smpl_math.Y_UP_TO_Z_UP @ world[9], atol=1e-4)


def test_motion_frame_rate_maps_onto_the_scene() -> None:
    bpy.context.scene.render.fps = 30
    rig = armature.build_smpl_armature("SMPL", JOINT_NAMES, PARENTS, rest_skeleton())
    pose, transl = synthetic_motion(5, seed=2)
    action = armature.apply_smpl_motion(rig, pose, transl, fps=20.0, frame_start=10)
    frames, values = keyframes.read_keys(action, rig, 'pose.bones["pelvis"].location', 2)
    np.testing.assert_allclose(frames, [10, 11.5, 13, 14.5, 16])
    np.testing.assert_allclose(values, transl[:, 2], atol=1e-6)


def test_building_keeps_the_users_selection() -> None:
    first = armature.build_armature("First", [armature.BoneSpec("a", (0, 0, 0), (0, 0, 1))])
    first.select_set(True)
    bpy.context.view_layer.objects.active = first
    second = armature.build_smpl_armature("SMPL", JOINT_NAMES, PARENTS, rest_skeleton())
    assert bpy.context.view_layer.objects.active == first and first.select_get() and not second.select_get()
    assert first.mode == second.mode == "OBJECT"
    assert [b.name for b in first.data.bones] == ["a"] and len(second.data.bones) == 24


def test_bad_skeleton_is_rejected() -> None:
    with pytest.raises(ValueError, match="parents come first"):
        armature.build_smpl_armature("bad", ("a", "b"), (1, -1), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"rest joints \[2, 3\]"):
        armature.build_smpl_armature("bad", ("a", "b"), (-1, 0), np.zeros((3, 3)))


# --- key writer -----------------------------------------------------------------------------------------------------


def test_keys_read_back_exactly_and_replace_old_keys() -> None:
    rig = armature.build_smpl_armature("SMPL", JOINT_NAMES, PARENTS, rest_skeleton())
    rng = np.random.default_rng(4)
    frames = np.arange(1.0, 31.0)
    channels = {('pose.bones["left_elbow"].rotation_quaternion', i): rng.normal(size=30) for i in range(4)}
    channels[("location", 1)] = rng.normal(size=30)
    action = bpy.data.actions.new("keys")
    keyframes.write_keys(rig, action, channels, frames)
    for (path, index), values in channels.items():
        got_frames, got_values = keyframes.read_keys(action, rig, path, index)
        np.testing.assert_array_equal(got_frames, frames.astype(np.float32))
        np.testing.assert_array_equal(got_values, values.astype(np.float32))
        fcurve = keyframes.find_fcurve(action, rig, path, index)
        assert {k.interpolation for k in fcurve.keyframe_points} == {"LINEAR"}
        assert fcurve.group.name == ("left_elbow" if path.startswith("pose") else keyframes.OBJECT_GROUP)
    bpy.context.scene.frame_set(7)
    assert rig.location[1] == pytest.approx(channels[("location", 1)][6], abs=1e-6)
    assert rig.pose.bones["left_elbow"].rotation_quaternion[2] == pytest.approx(
        channels[('pose.bones["left_elbow"].rotation_quaternion', 2)][6], abs=1e-6
    )
    # Writing again replaces the channel's keys.
    keyframes.write_keys(rig, action, {("location", 1): np.zeros(3)}, np.array([1.0, 2.0, 3.0]))
    assert keyframes.read_keys(action, rig, "location", 1)[1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="strictly increasing"):
        keyframes.write_keys(rig, action, {("location", 0): np.zeros(2)}, np.array([2.0, 1.0]))
    with pytest.raises(KeyError):
        keyframes.read_keys(action, rig, "scale", 0)


@pytest.mark.skipif(bpy.app.version < (4, 4, 0), reason="slotted actions (channelbags) arrived in Blender 4.4")
def test_channelbag_path_of_blender_4_4_works_on_this_version() -> None:
    """The 4.4/4.5 route (slot + layer + strip + channelbag) run on the installed Blender, next to the 5.0 route."""
    empty = bpy.data.objects.new("Empty", None)
    bpy.context.scene.collection.objects.link(empty)
    action = bpy.data.actions.new("slotted")
    keyframes.assign_action(empty, action)
    fcurve = keyframes._ensure_fcurve_in_channelbag(action, empty, "location", 2, keyframes.OBJECT_GROUP)
    assert keyframes._ensure_fcurve_in_channelbag(action, empty, "location", 2, keyframes.OBJECT_GROUP) == fcurve
    assert empty.animation_data.action_slot.identifier == "OBEmpty"
    assert fcurve.group.name == keyframes.OBJECT_GROUP
    fcurve.keyframe_points.add(2)
    fcurve.keyframe_points.foreach_set("co", [1.0, 0.0, 11.0, 5.0])
    fcurve.update()
    bpy.context.scene.frame_set(6)
    assert empty.location[2] == pytest.approx(2.5)
    assert keyframes.find_fcurve(action, empty, "location", 2) == fcurve


# --- retargeting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a_pose", [False, True], ids=["T-pose", "A-pose"])
def test_retarget_onto_mixamo_demo_rig(a_pose: bool) -> None:
    rest = rest_skeleton()
    pose, transl = synthetic_motion(30, seed=5)
    rig = armature.build_demo_rig("Demo", a_pose=a_pose)
    # The rig object itself turned and scaled: retargeting works in world space.
    rig.rotation_euler = (0.0, 0.0, np.pi / 2)
    rig.scale = (0.5, 0.5, 0.5)
    bpy.context.view_layer.update()
    action, result = armature.retarget_onto(rig, pose, transl, rest, fps=FPS)
    assert rig.animation_data.action == action
    preset, mapping = retarget.auto_mapping([b.name for b in rig.data.bones])
    assert preset == "mixamo" and set(result.rotations) == set(mapping.values())
    errors = direction_errors(rig, mapping, source_joints(pose, transl, rest))
    print(f"\nMixamo demo rig ({'A' if a_pose else 'T'}-pose): bone direction error mean {errors.mean():.2e} deg, "
          f"max {errors.max():.2e} deg over {errors.size} bone-frames")
    assert errors.mean() < 5.0
    assert errors.max() < 0.01

    # The skinned body follows: the hand box's centre sits on the posed hand bone's midpoint.
    body = bpy.data.objects["Demo body"]
    bpy.context.scene.frame_set(20)
    evaluated = body.evaluated_get(bpy.context.evaluated_depsgraph_get())
    group = body.vertex_groups["mixamorig:LeftHand"].index
    indices = [v.index for v in body.data.vertices if any(g.group == group for g in v.groups)]
    world = np.array(body.matrix_world)
    local = np.mean([np.array(evaluated.data.vertices[i].co) for i in indices], axis=0)
    centre = local @ world[:3, :3].T + world[:3, 3]
    hand = rig.pose.bones["mixamorig:LeftHand"]
    rig_world = np.array(rig.matrix_world)
    middle = (np.array(hand.head) + np.array(hand.tail)) / 2 @ rig_world[:3, :3].T + rig_world[:3, 3]
    np.testing.assert_allclose(centre, middle, atol=1e-4)


def _rigify_style_bones() -> list[armature.BoneSpec]:
    """Deform bones named like a generated Rigify rig (A-ish pose, bent elbows and knees, arm rolls), plus a root."""
    spine = [(0, 0.02, 1.0), (0, 0.0, 1.12), (0, 0.01, 1.25), (0, 0.02, 1.38), (0, 0.0, 1.5), (0, -0.01, 1.58),
             (0, -0.02, 1.64), (0, -0.02, 1.85)]
    names = ["DEF-spine"] + [f"DEF-spine.{k:03d}" for k in range(1, 7)]
    bones = [armature.BoneSpec("root", (0, 0, 0), (0, 0.3, 0))]
    bones += [armature.BoneSpec(n, spine[k], spine[k + 1], names[k - 1] if k else "root") for k, n in enumerate(names)]
    for s, x in (("L", 1), ("R", -1)):
        arm = [(x * 0.02, -0.05, 1.46), (x * 0.18, 0.03, 1.45), (x * 0.3, 0.05, 1.3), (x * 0.4, 0.07, 1.15),
               (x * 0.48, 0.0, 1.0), (x * 0.55, -0.06, 0.87), (x * 0.58, -0.08, 0.78)]
        arm_names = [f"DEF-shoulder.{s}", f"DEF-upper_arm.{s}", f"DEF-upper_arm.{s}.001", f"DEF-forearm.{s}",
                     f"DEF-forearm.{s}.001", f"DEF-hand.{s}"]
        parent = "DEF-spine.003"
        for k, n in enumerate(arm_names):
            bones.append(armature.BoneSpec(n, arm[k], arm[k + 1], parent, roll=x * (1.2 + 0.3 * k)))
            parent = n
        leg = [(x * 0.1, 0.01, 0.98), (x * 0.1, -0.01, 0.75), (x * 0.1, -0.03, 0.52), (x * 0.1, 0.03, 0.08),
               (x * 0.1, -0.1, 0.01), (x * 0.1, -0.18, 0.01)]
        leg_names = [f"DEF-thigh.{s}", f"DEF-thigh.{s}.001", f"DEF-shin.{s}", f"DEF-foot.{s}", f"DEF-toe.{s}"]
        parent = "DEF-spine"
        for k, n in enumerate(leg_names):
            bones.append(armature.BoneSpec(n, leg[k], leg[k + 1], parent, roll=0.4 * k))
            parent = n
    return bones


def test_retarget_onto_rigify_style_rig() -> None:
    rest = rest_skeleton()
    pose, transl = synthetic_motion(30, seed=6)
    rig = armature.build_armature("Rigify", _rigify_style_bones())
    rig.pose.bones["DEF-forearm.L"].rotation_mode = "XYZ"  # an Euler bone gets Euler keys
    action, result = armature.retarget_onto(rig, pose, transl, rest, fps=FPS)
    preset, mapping = retarget.auto_mapping([b.name for b in rig.data.bones])
    assert preset == "rigify_def" and mapping["root"] == "root"
    assert keyframes.find_fcurve(action, rig, 'pose.bones["DEF-forearm.L"].rotation_euler', 0) is not None
    assert keyframes.find_fcurve(action, rig, 'pose.bones["DEF-forearm.L"].rotation_quaternion', 0) is None
    joints = source_joints(pose, transl, rest)
    errors = direction_errors(rig, mapping, joints)
    print(f"\nRigify-style DEF rig: bone direction error mean {errors.mean():.2e} deg, max {errors.max():.2e} deg "
          f"over {errors.size} bone-frames")
    assert errors.mean() < 5.0
    assert errors.max() < 0.01
    # Root on the ground under the travelling hips.
    _, heads, _ = evaluated_bones(rig, np.arange(1, 31))
    names = [b.name for b in rig.data.bones]
    root, hips = heads[:, names.index("root")], heads[:, names.index("DEF-spine")]
    np.testing.assert_allclose(root[:, 2], 0.0, atol=1e-5)
    travel = (joints[:, 0] - joints[0, 0])[:, :2] * result.scale
    np.testing.assert_allclose(root[:, :2] - root[0, :2], travel, atol=1e-4)
    np.testing.assert_allclose(hips - hips[0], (joints[:, 0] - joints[0, 0]) * result.scale, atol=1e-4)


def _census() -> dict[str, int]:
    """How many data-blocks of the kinds a retarget could add."""
    return {kind: len(getattr(bpy.data, kind)) for kind in ("objects", "armatures", "actions", "meshes")}


def test_rig_built_lying_down_is_refused_before_anything_is_written() -> None:
    """Y-up bones (the character lies along +Y in world space): a clear refusal, no action, pose untouched."""
    lying = [armature.BoneSpec(b.name, (b.head[0], b.head[2], -b.head[1]), (b.tail[0], b.tail[2], -b.tail[1]),
                               b.parent) for b in armature.demo_rig_bones()]
    rig = armature.build_armature("Lying", lying)
    before = _census()
    pose, transl = synthetic_motion(10, seed=3)
    with pytest.raises(ValueError, match="does not stand upright"):
        armature.retarget_onto(rig, pose, transl, rest_skeleton(), fps=FPS)
    assert _census() == before and rig.animation_data is None
    # Standing it up through the object's rotation is enough.
    rig.rotation_euler = (np.pi / 2, 0.0, 0.0)
    bpy.context.view_layer.update()
    action, _ = armature.retarget_onto(rig, pose, transl, rest_skeleton(), fps=FPS)
    assert rig.animation_data.action == action


def test_constraint_driven_bones_are_solved_on_the_evaluated_pose() -> None:
    """A hips control that follows a root bone through an Armature constraint (as in Rigify) and an upper arm that
    copies the root's rotation: the evaluated pose still follows the source, root motion applied once."""
    rest = rest_skeleton()
    pose, transl = synthetic_motion(20, seed=7)
    bones = [armature.BoneSpec("root", (0, 0, 0), (0, 0.3, 0))] + armature.demo_rig_bones(prefix="")
    rig = armature.build_armature("Driven", bones)
    hips = rig.pose.bones["Hips"]
    follow = hips.constraints.new("ARMATURE")
    follow.targets.new().target = rig
    follow.targets[0].subtarget = "root"
    turn = rig.pose.bones["LeftArm"].constraints.new("COPY_ROTATION")
    turn.target, turn.subtarget, turn.mix_mode, turn.target_space, turn.owner_space = (
        rig, "root", "BEFORE", "LOCAL", "LOCAL")
    bpy.context.view_layer.update()
    mapping = dict(retarget.preset_mapping("mixamo", [b.name for b in rig.data.bones]), root="root")
    _, result = armature.retarget_onto(rig, pose, transl, rest, fit=armature.check_target(rig, mapping), fps=FPS)
    errors = direction_errors(rig, mapping, source_joints(pose, transl, rest))
    assert errors.max() < 0.01
    _, heads, _ = evaluated_bones(rig, np.arange(1, 21))
    index = [b.name for b in rig.data.bones].index("Hips")
    joints = source_joints(pose, transl, rest)
    np.testing.assert_allclose(heads[:, index] - heads[0, index], (joints[:, 0] - joints[0, 0]) * result.scale,
                               atol=1e-4)


def test_bones_held_by_constraints_are_reported() -> None:
    """Keying bones that a Copy Transforms constraint holds does nothing: refused, naming them, nothing written."""
    rig = armature.build_demo_rig("Held")
    for name in ("mixamorig:LeftForeArm", "mixamorig:RightLeg"):
        hold = rig.pose.bones[name].constraints.new("COPY_TRANSFORMS")
        hold.target, hold.subtarget = rig, "mixamorig:Spine"
    before = _census()
    with pytest.raises(ValueError, match=r"2 mapped bone\(s\) do not move when keyed.*'mixamorig:LeftForeArm' "
                                         r"\(left_elbow\)"):
        armature.fit_target(rig, "AUTO")
    pose, transl = synthetic_motion(5, seed=1)
    with pytest.raises(ValueError, match="do not move when keyed"):
        armature.retarget_onto(rig, pose, transl, rest_skeleton(), fps=FPS)
    assert _census() == before


GERMAN_NAMES = {"Hips": "Becken", "Spine": "Wirbelsäule", "Spine1": "Wirbelsäule.001", "Spine2": "Brust",
                "Neck": "Hals", "Head": "Kopf", "Shoulder": "Schulter", "Arm": "Oberarm", "ForeArm": "Unterarm",
                "Hand": "Hand", "UpLeg": "Oberschenkel", "Leg": "Unterschenkel", "Foot": "Fuß", "ToeBase": "Zehen"}


def _renamed(rename) -> list[armature.BoneSpec]:
    """The demo rig's bones (no prefix) under other names."""
    return [armature.BoneSpec(rename(b.name), b.head, b.tail, rename(b.parent) if b.parent else None)
            for b in armature.demo_rig_bones(prefix="")]


def _german(name: str) -> str:
    for side, suffix in (("Left", ".L"), ("Right", ".R")):
        if name.startswith(side):
            return GERMAN_NAMES[name[len(side):]] + suffix
    return GERMAN_NAMES[name]


def test_german_and_generic_bone_names_end_to_end() -> None:
    rest = rest_skeleton()
    pose, transl = synthetic_motion(12, seed=9)
    joints = source_joints(pose, transl, rest)
    german = armature.build_armature("Deutsch", _renamed(_german))
    fit = armature.fit_target(german, "AUTO")
    mapping = fit.mapping
    assert len(mapping) == 22 and mapping["left_ankle"] == "Fuß.L" and mapping["spine3"] == "Brust"
    armature.retarget_onto(german, pose, transl, rest, fit=fit, fps=FPS)
    assert direction_errors(german, mapping, joints).max() < 0.01

    # Generic names: nothing is guessed; a mapping made bone by bone (as the editor does) drives the rig.
    order = [b.name for b in armature.demo_rig_bones(prefix="")]
    generic = armature.build_armature("Generic", _renamed(lambda n: f"bone_{order.index(n):03d}"))
    with pytest.raises(ValueError, match="map the bones by hand"):
        armature.fit_target(generic, "AUTO")
    by_hand: dict[str, str] = {}
    for role, bone in retarget.preset_mapping("mixamo", order).items():
        by_hand = retarget.set_mapping_bone(by_hand, role, f"bone_{order.index(bone):03d}")
    armature.retarget_onto(generic, pose, transl, rest, fit=armature.check_target(generic, by_hand), fps=FPS)
    assert direction_errors(generic, by_hand, joints).max() < 0.01


def test_rig_facing_the_other_way_faces_the_source() -> None:
    """A rig built facing +Y (Blender's convention is -Y): the take still faces where the source faces."""
    rest = rest_skeleton()
    pose, transl = synthetic_motion(12, seed=10)
    turned = [armature.BoneSpec(b.name, (-b.head[0], -b.head[1], b.head[2]), (-b.tail[0], -b.tail[1], b.tail[2]),
                                b.parent) for b in armature.demo_rig_bones()]
    rig = armature.build_armature("Backwards", turned)
    _, mapping = retarget.auto_mapping([b.name for b in rig.data.bones])
    armature.retarget_onto(rig, pose, transl, rest, fit=armature.check_target(rig, mapping), fps=FPS)
    joints = source_joints(pose, transl, rest)
    names, heads, _ = evaluated_bones(rig, np.arange(1, 13))
    across = heads[:, names.index(mapping["left_hip"])] - heads[:, names.index(mapping["right_hip"])]
    source_across = joints[:, 1] - joints[:, 2]
    yaw = np.degrees(np.arctan2(across[:, 1], across[:, 0]) - np.arctan2(source_across[:, 1], source_across[:, 0]))
    assert np.abs((yaw + 180.0) % 360.0 - 180.0).max() < 0.01
    assert direction_errors(rig, mapping, joints).max() < 0.01


def test_bones_that_cannot_reach_the_motion_are_reported_and_the_rig_is_restored() -> None:
    """A Limit Rotation lets the test turn through (20 of 30 degrees) but not the motion's larger turns: the solve
    names the bone, creates nothing and puts the rig's pose and action back."""
    rig = armature.build_demo_rig("Limited")
    limit = rig.pose.bones["mixamorig:LeftForeArm"].constraints.new("LIMIT_ROTATION")
    limit.owner_space = "LOCAL"
    for axis in "xyz":
        setattr(limit, f"use_limit_{axis}", True)
        setattr(limit, f"min_{axis}", -np.radians(20.0))
        setattr(limit, f"max_{axis}", np.radians(20.0))
    pose, transl = synthetic_motion(10, seed=4)
    first, _ = armature.retarget_onto(rig, 0.1 * pose, transl, rest_skeleton(), fps=FPS, action_name="kept")
    bpy.context.scene.frame_set(1)
    rig.pose.bones["mixamorig:Spine"].rotation_quaternion = (-0.9, 0.1, 0.2, 0.3)  # unkeyed, w < 0, not unit

    def pose_values():
        return [tuple(v for c in ("location", "rotation_quaternion", "scale") for v in getattr(b, c))
                for b in rig.pose.bones]

    before = (_census(), pose_values())
    with pytest.raises(ValueError, match=r"'mixamorig:LeftForeArm' \(\d+\.\d deg, 0\.0 cm\).*does not fit"):
        armature.retarget_onto(rig, pose, transl, rest_skeleton(), fps=FPS)
    after = (_census(), pose_values())
    assert after == before and rig.animation_data.action == first
