"""Take operators of the add-on on the real bpy wheel: reading an SMPL take back, retargeting it onto Mixamo- and
Rigify-named rigs, auditing it against a real server, exporting it through Blender's BVH, FBX and glTF exporters."""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon_support import (  # noqa: E402
    addon,  # noqa: F401 (fixture)
    addon_module,
    clean_scene,  # noqa: F401 (fixture)
    rest_skeleton,
    select,
    synthetic_motion,
    tiny_server,  # noqa: F401 (fixture)
    use_server,
)

FPS = 20
FRAMES = 30


@pytest.fixture(scope="module")
def ops(addon):
    """The add-on's ops_motion module (registered with the add-on)."""
    return addon.ops_motion


def smpl_take(seed: int = 1, frame_start: int = 1):
    """An SMPL armature keyed with a synthetic motion; returns (armature, pose, transl, rest)."""
    armature, smpl_math = addon_module("armature"), addon_module("smpl_math")
    rest = rest_skeleton()
    pose, transl = synthetic_motion(FRAMES, seed)
    rig = armature.build_smpl_armature("SMPL take", smpl_math.JOINT_NAMES, smpl_math.PARENTS, rest)
    armature.apply_smpl_motion(rig, pose, transl, fps=FPS, action_name="take", frame_start=frame_start)
    return rig, pose, transl, rest


def direction_errors(rig, mapping: dict[str, str], joints_zup: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Degrees between each mapped bone (head to the head of the bone mapped to the SMPL child) and the source."""
    retarget, smpl_math = addon_module("retarget"), addon_module("smpl_math")
    world = np.array(rig.matrix_world)
    errors = []
    for k, frame in enumerate(frames):
        bpy.context.scene.frame_set(int(frame))
        for role, bone in mapping.items():
            j = smpl_math.JOINT_NAMES.index(role) if role in smpl_math.JOINT_NAMES else None
            child = retarget.DIRECTION_CHILD.get(j)
            if child is None or smpl_math.JOINT_NAMES[child] not in mapping:
                continue
            head = np.array(rig.pose.bones[bone].head)
            child_head = np.array(rig.pose.bones[mapping[smpl_math.JOINT_NAMES[child]]].head)
            target = (child_head - head) @ world[:3, :3].T
            source = joints_zup[k, child] - joints_zup[k, j]
            cos = target @ source / (np.linalg.norm(target) * np.linalg.norm(source))
            errors.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return np.array(errors)


def rigify_control_rig():
    """An armature named like Rigify's FK controls (root, torso, spine_fk.*, thigh_fk.L, ...), A-pose arms, rolls."""
    armature = addon_module("armature")
    Bone = armature.BoneSpec
    bones = [Bone("root", (0, 0, 0), (0, 0.4, 0)),
             Bone("torso", (0, 0.03, 1.0), (0, 0.03, 1.1), "root"),
             Bone("spine_fk.001", (0, 0.02, 1.0), (0, 0.0, 1.14), "torso"),
             Bone("spine_fk.002", (0, 0.0, 1.14), (0, 0.01, 1.28), "spine_fk.001"),
             Bone("spine_fk.003", (0, 0.01, 1.28), (0, 0.02, 1.45), "spine_fk.002"),
             Bone("neck", (0, 0.02, 1.45), (0, -0.01, 1.58), "spine_fk.003"),
             Bone("head", (0, -0.01, 1.58), (0, -0.02, 1.8), "neck")]
    for s, x in (("L", 1.0), ("R", -1.0)):
        arm = [(x * 0.03, -0.04, 1.42), (x * 0.17, 0.02, 1.42), (x * 0.38, 0.05, 1.2), (x * 0.55, 0.0, 1.0),
               (x * 0.63, -0.03, 0.91)]
        parent = "spine_fk.003"
        for k, name in enumerate(("shoulder", "upper_arm_fk", "forearm_fk", "hand_fk")):
            bones.append(Bone(f"{name}.{s}", arm[k], arm[k + 1], parent, roll=x * (0.9 + 0.4 * k)))
            parent = f"{name}.{s}"
        leg = [(x * 0.1, 0.01, 0.97), (x * 0.1, -0.02, 0.52), (x * 0.1, 0.03, 0.08), (x * 0.1, -0.11, 0.01),
               (x * 0.1, -0.19, 0.01)]
        parent = "torso"
        for k, name in enumerate(("thigh_fk", "shin_fk", "foot_fk", "toe_fk")):
            bones.append(Bone(f"{name}.{s}", leg[k], leg[k + 1], parent, roll=0.3 * k))
            parent = f"{name}.{s}"
    return armature.build_armature("Rigify controls", bones)


# --- reading a take back --------------------------------------------------------------------------------------------


def test_smpl_take_reads_back_exactly(ops, clean_scene):
    rig, pose, transl, rest = smpl_take(seed=3, frame_start=5)
    take = ops.read_smpl_take(rig, rig.animation_data.action)
    smpl_math = addon_module("smpl_math")
    assert take.frame_start == 5 and take.fps == FPS and take.pose.shape == (FRAMES, 24, 3)
    np.testing.assert_allclose(smpl_math.axis_angle_to_matrix(take.pose), smpl_math.axis_angle_to_matrix(pose),
                               atol=1e-5)
    np.testing.assert_allclose(take.transl, transl, atol=1e-6)
    np.testing.assert_allclose(take.rest_joints, rest, atol=1e-6)
    joints = smpl_math.forward_kinematics(pose, transl, rest)[0]
    np.testing.assert_allclose(ops.take_joints(take), joints, atol=1e-5)


def test_euler_bones_and_rolled_rest_frames_read_back(ops, clean_scene):
    """An SMPL-named armature with other bone rolls and an Euler bone: the read-back motion is the same."""
    armature, smpl_math = addon_module("armature"), addon_module("smpl_math")
    rest = rest_skeleton()
    pose, transl = synthetic_motion(12, seed=4)
    heads = smpl_math.points_to_z_up(rest)
    bones = []
    for j, name in enumerate(smpl_math.JOINT_NAMES):
        head = tuple(heads[j])
        tail = (head[0] + 0.05, head[1] - 0.02, head[2] + 0.08)  # tilted bones with a roll: rest frames not SMPL's
        parent = smpl_math.JOINT_NAMES[smpl_math.PARENTS[j]] if j else None
        bones.append(armature.BoneSpec(name, head, tail, parent, roll=0.3 * j))
    rig = armature.build_armature("Imported SMPL", bones)
    rig.pose.bones["left_elbow"].rotation_mode = "XYZ"
    # Key the imported rig by retargeting the SMPL motion onto it with the SMPL preset (a different key layout).
    action, _ = armature.retarget_onto(rig, pose, transl, rest, fps=FPS, action_name="imported")
    take = ops.read_smpl_take(rig, action)
    np.testing.assert_allclose(ops.take_joints(take), smpl_math.forward_kinematics(pose, transl, rest)[0],
                               atol=1e-4)


# --- retarget -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mixamo", "rigify"])
def test_retarget_operator_follows_the_source(ops, clean_scene, kind, monkeypatch):
    armature, retarget, smpl_math = addon_module("armature"), addon_module("retarget"), addon_module("smpl_math")
    rig, pose, transl, rest = smpl_take(seed=5)
    target = armature.build_demo_rig("Demo", a_pose=True) if kind == "mixamo" else rigify_control_rig()
    select(rig, target)
    checks: list[str] = []
    for module, name in ((retarget, "fit_rig"), (retarget, "hip_height"), (armature, "_frozen_bones")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _real=real, _name=name, **k: checks.append(_name) or _real(*a, **k))
    assert bpy.ops.safemotion.retarget_action() == {"FINISHED"}
    assert sorted(checks) == ["_frozen_bones", "fit_rig", "hip_height"]  # the rig is checked once per retarget
    action = target.animation_data.action
    assert action.name == f"take ({target.name})"
    assert tuple(round(f) for f in action.frame_range) == (1, FRAMES)
    preset, mapping = retarget.auto_mapping([b.name for b in target.data.bones])
    assert preset == kind
    joints = smpl_math.points_to_z_up(smpl_math.forward_kinematics(pose, transl, rest)[0])
    errors = direction_errors(target, mapping, joints, np.arange(1, FRAMES + 1))
    print(f"\n{kind} rig via the operator: bone direction error mean {errors.mean():.2e} deg, "
          f"max {errors.max():.2e} deg over {errors.size} bone-frames")
    assert errors.mean() < 5.0
    assert errors.max() < 0.05


def test_retarget_with_a_chosen_preset_and_its_errors(ops, clean_scene):
    armature = addon_module("armature")
    rig, *_ = smpl_take(seed=6)
    target = armature.build_demo_rig("Demo")
    select(rig, target)
    assert bpy.ops.safemotion.retarget_action(preset="mixamo", in_place=True) == {"FINISHED"}
    hips = target.pose.bones["mixamorig:Hips"]
    bpy.context.scene.frame_set(FRAMES)
    assert abs(hips.head[1]) < 0.2  # in place: the 1.5 m walk is gone (a sway is left)
    with pytest.raises(RuntimeError, match="no bone is mapped to 'pelvis'"):
        bpy.ops.safemotion.retarget_action(preset="ue5")
    select(rig)
    with pytest.raises(RuntimeError, match="no target armature"):
        bpy.ops.safemotion.retarget_action()
    bpy.context.scene.safemotion.target_armature = target  # the panel's target is used when none is selected
    assert bpy.ops.safemotion.retarget_action() == {"FINISHED"}
    select(target)
    with pytest.raises(RuntimeError, match="Make an SMPL armature"):
        bpy.ops.safemotion.retarget_action()


# --- audit ----------------------------------------------------------------------------------------------------------


def test_audit_operator_sends_the_take_and_marks_hit_spans(ops, clean_scene, tiny_server):
    use_server(tiny_server.url)
    client_module, smpl_math = addon_module("client"), addon_module("smpl_math")
    rig, pose, transl, rest = smpl_take(seed=7, frame_start=11)
    select(rig)
    assert bpy.ops.safemotion.audit_action() == {"FINISHED"}
    action = rig.animation_data.action
    record = json.loads(action[ops.AUDIT_PROPERTY])
    assert record["frames"] > 0 and record["fps"] > 0 and 0.0 <= record["hit_ratio"] <= 1.0
    # The operator sent this take's joints: auditing them directly gives the same record.
    joints = smpl_math.forward_kinematics(pose, transl, rest)[0][:, :22]
    direct = client_module.BackendClient(tiny_server.url).audit({"joints": client_module.encode_array(joints),
                                                                 "fps": float(FPS)})
    assert record["hit_tokens"] == direct["hit_tokens"] and record["num_tokens"] == direct["num_tokens"]
    assert record["hit_ratio"] == pytest.approx(direct["hit_ratio"])
    markers = sorted((m.frame, m.name) for m in bpy.context.scene.timeline_markers)
    assert len(markers) == 2 * len(record["spans"])
    print(f"\naudit: {record['hits']}/{record['num_tokens']} tokens hit, {len(record['spans'])} spans")
    for k, span in enumerate(record["spans"], start=1):
        start = 11 + round(span["start_s"] * FPS)
        name = f"{ops.AUDIT_MARKER_PREFIX} {action.name} hit {k} {span['start_s']:.1f}-{span['end_s']:.1f} s"
        assert (start, name) in markers
    # Auditing again replaces the markers instead of piling them up.
    assert bpy.ops.safemotion.audit_action() == {"FINISHED"}
    assert len(bpy.context.scene.timeline_markers) == len(markers)


def test_audit_markers_land_on_scene_frames(ops, clean_scene):
    scene = bpy.context.scene
    scene.timeline_markers.new("user marker", frame=3)
    report = {"spans": [{"start_frame": 20, "end_frame": 30, "start_s": 1.0, "end_s": 1.5},
                        {"start_frame": 60, "end_frame": 64, "start_s": 3.0, "end_s": 3.2}]}
    ops.mark_audit_spans(scene, report, frame_start=1, fps=30.0)
    frames = sorted((m.frame, m.name) for m in scene.timeline_markers)
    assert [f for f, _ in frames] == [3, 31, 45, 91, 96]
    ops.mark_audit_spans(scene, {"spans": []}, frame_start=1, fps=30.0)
    assert [m.name for m in scene.timeline_markers] == ["user marker"]


def test_audit_needs_an_armature_with_an_action(ops, clean_scene):
    armature = addon_module("armature")
    demo = armature.build_demo_rig("Demo")
    select(next(o for o in bpy.data.objects if o.type == "MESH"))
    with pytest.raises(RuntimeError, match="no armature is active: click the armature"):
        bpy.ops.safemotion.audit_action()
    select(demo)
    with pytest.raises(RuntimeError, match="'Demo' has no active action"):
        bpy.ops.safemotion.audit_action()
    rig, *_ = smpl_take()
    rig.animation_data.action = None
    select(rig)
    with pytest.raises(RuntimeError, match="has no active action"):
        bpy.ops.safemotion.audit_action()


# --- export ---------------------------------------------------------------------------------------------------------


def test_export_bvh_fbx_and_glb(ops, clean_scene, tmp_path):
    armature = addon_module("armature")
    rig, pose, transl, rest = smpl_take(seed=8)
    demo = armature.build_demo_rig("Demo")
    select(rig, demo)
    assert bpy.ops.safemotion.retarget_action() == {"FINISHED"}
    bpy.context.scene.frame_end = 5  # the export covers the take's frames, whatever the scene range
    select(demo)
    magic = {"BVH": b"HIERARCHY", "FBX": b"Kaydara FBX Binary", "GLB": b"glTF"}
    for fmt, suffix in ops.EXPORT_FORMATS.items():
        path = tmp_path / f"take{suffix}"
        assert bpy.ops.safemotion.export_motion(format=fmt, filepath=str(path)) == {"FINISHED"}
        data = path.read_bytes()
        assert data.startswith(magic[fmt]), fmt
        print(f"\n{fmt}: {len(data)} bytes")
    assert bpy.context.scene.frame_end == 5 and demo.select_get() and bpy.context.view_layer.objects.active == demo
    # A file name without the extension gets it.
    assert bpy.ops.safemotion.export_motion(format="BVH", filepath=str(tmp_path / "plain")) == {"FINISHED"}
    assert (tmp_path / "plain.bvh").is_file()

    # The BVH reads back with one frame per take frame and the same bones.
    before = set(bpy.data.actions)
    assert bpy.ops.import_anim.bvh(filepath=str(tmp_path / "take.bvh")) == {"FINISHED"}
    imported = bpy.context.view_layer.objects.active
    action = imported.animation_data.action
    assert action not in before
    first, last = action.frame_range
    assert round(last - first) + 1 == FRAMES
    assert {b.name for b in imported.data.bones} == {b.name for b in demo.data.bones}


def test_export_needs_an_armature_with_a_take(ops, clean_scene, tmp_path):
    mesh = bpy.data.objects.new("Mesh", bpy.data.meshes.new("Mesh"))
    bpy.context.scene.collection.objects.link(mesh)
    select(mesh)
    with pytest.raises(RuntimeError, match="Select the armature to export"):
        bpy.ops.safemotion.export_motion(format="FBX", filepath=str(tmp_path / "x.fbx"))
    armature = addon_module("armature")
    first, second = armature.build_demo_rig("A"), armature.build_demo_rig("B")
    select(mesh, first, second)
    with pytest.raises(RuntimeError, match="2 armatures are selected"):
        bpy.ops.safemotion.export_motion(format="FBX", filepath=str(tmp_path / "x.fbx"))
    select(first)
    with pytest.raises(RuntimeError, match="has no active action"):
        bpy.ops.safemotion.export_motion(format="BVH", filepath=str(tmp_path / "x.bvh"))
    assert not any(tmp_path.iterdir())
