"""A real mocap clip through the add-on on the bpy wheel: the keijiro karate FBX (CMU 135_01, Bassai kata, a
`Neo_`-prefixed Mixamo-named rig) becomes SMPL motion, is keyed on the SMPL armature and retargeted by the real
`safemotion.retarget_action` operator onto the Mixamo-named demo rig and onto the FBX's own imported rig.

Needs ../shared (skips cleanly without it). Loading the clip resets Blender's preferences (load_motion reads the FBX
through `read_factory_settings`), which would disable the add-on: the module-scoped `karate` fixture is therefore
listed before `clean_scene` in every test, so the clip is loaded before the add-on is enabled.
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
mocap_import = pytest.importorskip("safemotion.data.mocap_import")  # the backend reads the FBX and solves the pose
smpl = pytest.importorskip("safemotion.motion.smpl")

from addon_support import (  # noqa: E402
    addon,  # noqa: F401 (fixture)
    addon_module,
    clean_scene,  # noqa: F401 (fixture)
    select,
    tiny_server,  # noqa: F401 (fixture)
    use_server,
)

KARATE = "data/cmu/keijiro_fbx/135_01.fbx"
FRAMES = 400  # first 20 s of the kata at 20 fps: stances, turns, blocks and strikes
CHECKED_FRAMES = np.arange(1, FRAMES + 1, 2)  # scene frames whose pose is evaluated
MAX_MEAN_DEGREES = 5.0  # the acceptance bound on the mean bone direction error


@pytest.fixture(scope="module")
def karate(shared_dir):
    """The karate clip's SMPL-22 joints [FRAMES, 22, 3] (Y-up, metres, 20 fps) and its SMPL motion."""
    path = shared_dir / KARATE
    if not path.is_file():
        pytest.skip(f"keijiro FBX clips not staged ({path})")
    clip = mocap_import.load_motion(path)
    joints = clip.joints[:FRAMES].astype(np.float64)
    return path, joints, smpl.joints_to_smpl(joints, fps=20.0)


def smpl_take(motion):
    """The add-on's SMPL armature (rest = the clip's skeleton) keyed with the karate motion from scene frame 1."""
    armature, smpl_math = addon_module("armature"), addon_module("smpl_math")
    rig = armature.build_smpl_armature("Karate SMPL", smpl_math.JOINT_NAMES, smpl_math.PARENTS, motion.rest_joints)
    armature.apply_smpl_motion(rig, motion.pose, motion.transl, fps=motion.fps, action_name="karate")
    return rig


def import_fbx_rig(path):
    """Import the FBX into the current scene with Blender's importer; returns its armature object.

    The importer sets the scene to the file's 30 fps; the scene goes back to its own rate (20 fps, `clean_scene`).
    """
    render = bpy.context.scene.render
    fps, fps_base = render.fps, render.fps_base
    before = set(bpy.data.objects)
    assert bpy.ops.import_scene.fbx(filepath=str(path)) == {"FINISHED"}
    render.fps, render.fps_base = fps, fps_base
    rigs = [obj for obj in bpy.data.objects if obj not in before and obj.type == "ARMATURE"]
    assert len(rigs) == 1, [obj.name for obj in rigs]
    return rigs[0]


def retarget_with_operator(source, target) -> None:
    """Run `safemotion.retarget_action` with the SMPL armature active and the target selected (auto-detected preset)."""
    view_layer = bpy.context.view_layer
    for obj in view_layer.objects:
        obj.select_set(False)
    source.select_set(True)
    target.select_set(True)
    view_layer.objects.active = source
    assert bpy.ops.safemotion.retarget_action() == {"FINISHED"}
    assert target.animation_data.action.name == f"karate ({target.name})"


def bone_pairs(mapping: dict[str, str]) -> list[tuple[int, int]]:
    """(joint, child) index pairs of the SMPL-22 bones whose both ends are mapped: the directions retargeting keeps."""
    retarget, smpl_math = addon_module("retarget"), addon_module("smpl_math")
    names = smpl_math.JOINT_NAMES
    return [(j, c) for j, c in retarget.DIRECTION_CHILD.items()
            if c < 22 and names[j] in mapping and names[c] in mapping]


def sample_heads(rig, frames: np.ndarray) -> np.ndarray:
    """World positions [F, B, 3] of every pose bone's head at these scene frames (Blender axes)."""
    bones = rig.pose.bones
    buffer = np.empty(len(bones) * 3, dtype=np.float32)
    heads = np.empty((len(frames), len(bones), 3))
    for k, frame in enumerate(frames):
        bpy.context.scene.frame_set(int(frame))
        bones.foreach_get("head", buffer)
        world = np.array(rig.matrix_world, dtype=np.float64)
        heads[k] = buffer.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    return heads


def direction_errors(rig, mapping: dict[str, str], joints_yup: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Degrees [F, P] between each mapped bone (its head to the head of the bone mapped to the SMPL child) and the
    same bone of the clip's joints, at scene frames `frames` (frame 1 = clip frame 0)."""
    smpl_math = addon_module("smpl_math")
    names = smpl_math.JOINT_NAMES
    index = {bone.name: b for b, bone in enumerate(rig.pose.bones)}
    heads = sample_heads(rig, frames)
    joints = smpl_math.points_to_z_up(joints_yup[frames - 1])
    pairs = bone_pairs(mapping)
    target = np.stack([heads[:, index[mapping[names[c]]]] - heads[:, index[mapping[names[j]]]] for j, c in pairs], 1)
    source = np.stack([joints[:, c] - joints[:, j] for j, c in pairs], 1)
    cos = np.sum(target * source, -1) / (np.linalg.norm(target, axis=-1) * np.linalg.norm(source, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def travel_fit(rig, hips: str, joints_yup: np.ndarray, frames: np.ndarray) -> tuple[float, float]:
    """Least-squares scale s and worst residual (m) of the hips' ground travel against s x the clip pelvis's."""
    smpl_math = addon_module("smpl_math")
    heads = sample_heads(rig, frames)[:, rig.pose.bones.find(hips), :2]
    pelvis = smpl_math.points_to_z_up(joints_yup[frames - 1, 0])[:, :2]
    moved, clip_moved = heads - heads[0], pelvis - pelvis[0]
    scale = float(np.sum(moved * clip_moved) / np.sum(clip_moved * clip_moved))
    return scale, float(np.linalg.norm(moved - scale * clip_moved, axis=-1).max())


def test_karate_smpl_motion_reproduces_the_clip(karate):
    """joints -> SMPL pose is exact: forward kinematics gives the clip's joints back (what the add-on then keys)."""
    _, joints, motion = karate
    assert motion.pose.shape == (FRAMES, 24, 3) and motion.fps == 20.0
    rebuilt = smpl.smpl_forward_kinematics(motion.pose, motion.transl, motion.rest_joints)[:, :22]
    np.testing.assert_allclose(rebuilt, joints, atol=1e-4)
    travel = np.linalg.norm(joints[-1, 0, [0, 2]] - joints[0, 0, [0, 2]])
    spread = np.ptp(joints[:, 0, [0, 2]], axis=0).max()
    print(f"\nkarate clip: {FRAMES} frames, pelvis travel {travel:.2f} m, spread {spread:.2f} m")
    assert spread > 0.3  # the kata steps around: the root motion is not trivial


def test_imported_neo_rig_is_detected_as_mixamo(karate, clean_scene):
    retarget, armature = addon_module("retarget"), addon_module("armature")
    path, _, _ = karate
    rig = import_fbx_rig(path)
    names = [bone.name for bone in rig.data.bones]
    assert len(names) == 22 and all(name.startswith("Neo_") for name in names)
    assert retarget.detect_preset(names) == "mixamo"
    assert retarget.detect_prefix("mixamo", names) == "Neo_"
    mapping = armature.fit_target(rig, "AUTO").mapping
    expected = {role: "Neo_" + bone for role, (bone, *_) in retarget.PRESETS["mixamo"].items()}
    assert mapping == expected and len(mapping) == 22  # every SMPL-22 joint, each on its own Neo_ bone


@pytest.mark.parametrize("target_kind", ["demo", "neo"])
def test_karate_retargets_through_the_operator(karate, clean_scene, target_kind):
    """The operator moves the karate motion from the SMPL armature onto a Mixamo-named rig: the demo rig (T-pose,
    `mixamorig:` names) or the clip's own imported `Neo_` rig; bone directions follow the clip's joints."""
    retarget, armature = addon_module("retarget"), addon_module("armature")
    path, joints, motion = karate
    target = armature.build_demo_rig("Demo") if target_kind == "demo" else import_fbx_rig(path)
    source = smpl_take(motion)
    retarget_with_operator(source, target)
    action = target.animation_data.action
    assert tuple(round(f) for f in action.frame_range) == (1, FRAMES)

    preset, mapping = retarget.auto_mapping([bone.name for bone in target.data.bones])
    assert preset == "mixamo" and len(bone_pairs(mapping)) == 17
    errors = direction_errors(target, mapping, joints, CHECKED_FRAMES)
    worst = np.unravel_index(errors.argmax(), errors.shape)
    print(f"\nkarate -> {target_kind} rig: bone direction error mean {errors.mean():.3g} deg, "
          f"max {errors.max():.3g} deg (frame {CHECKED_FRAMES[worst[0]]}, pair {bone_pairs(mapping)[worst[1]]}) "
          f"over {errors.size} bone-frames")
    assert errors.mean() < MAX_MEAN_DEGREES
    assert errors.max() < 1.0  # no single bone or frame goes astray either

    scale, residual = travel_fit(target, mapping["pelvis"], joints, CHECKED_FRAMES)
    print(f"hips travel = {scale:.3f} x clip pelvis travel, worst residual {residual * 100:.2f} cm")
    assert 0.5 < scale < 1.5 and residual < 0.01


def test_safety_report_lists_blocked_sanitized_and_audited_decisions(karate, clean_scene, tiny_server, tmp_path):
    """A batch with one blocked prompt, a sanitized take and its audit, and the imported FBX kata audited in Blender:
    all in the Safety list and the CSV/JSON report, the kata's hit spans as markers beside the take's."""
    import csv
    import json

    use_server(tiny_server.url)
    scene = clean_scene
    settings = scene.safemotion
    settings.random_seed, settings.policy = False, "BLOCK"
    prompts = tmp_path / "prompts.csv"  # with the tiny model, seed 2 passes and seed 1 is flagged (blocked)
    prompts.write_text("prompt,seconds,seed\na person walks,4,2\na person jumps,4,1\n")
    scene.safemotion_batch.source, scene.safemotion_batch.filepath = "FILE", str(prompts)
    assert bpy.ops.safemotion.batch_generate() == {"FINISHED"}
    assert [i.state for i in scene.safemotion_batch.items] == ["DONE", "BLOCKED"]

    settings.policy, settings.prompt, settings.seconds, settings.seed = "SANITIZE", "a person walks forward", 4.0, 9
    assert bpy.ops.safemotion.generate() == {"FINISHED"}
    take = settings.takes[0]
    assert take.safety.decision == "sanitized"
    select(take.armature)
    assert bpy.ops.safemotion.audit_action() == {"FINISHED"}

    path, _, _ = karate
    rig = import_fbx_rig(path)
    scene.render.fps = 30  # the clip's own rate: its keys play at their speed
    select(rig)
    assert bpy.ops.safemotion.audit_action() == {"FINISHED"}
    kata = rig.animation_data.action
    report = json.loads(kata[addon_module("ops_motion").AUDIT_PROPERTY])
    kata_markers = [m for m in scene.timeline_markers if m.name.startswith(f"SafeMotion audit {kata.name[:24]} ")]
    assert len(kata_markers) == 2 * len(report["spans"]) and report["num_tokens"] > 50
    take_report = json.loads(bpy.data.actions[take.action_name][addon_module("ops_motion").AUDIT_PROPERTY])
    take_markers = [m for m in scene.timeline_markers
                    if m.name.startswith(f"SafeMotion audit {take.action_name[:24]} ")]
    assert len(take_markers) == 2 * len(take_report["spans"])  # the take's own audit markers stay beside the kata's

    out = tmp_path / "report.csv"
    assert bpy.ops.safemotion.export_safety_report(filepath=str(out)) == {"FINISHED"}
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    decisions = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["decisions"]
    assert [(r["event"], r["decision"]) for r in rows] == [("generation", "blocked"), ("generation", "sanitized"),
                                                           ("audit", "audited"), ("audit", "audited")]
    assert [d["decision"] for d in decisions] == [r["decision"] for r in rows]
    assert [d["hit_ratio"] for d in decisions] == [pytest.approx(float(r["hit_ratio"])) for r in rows]
    blocked, sanitized, take_audit, kata_audit = rows
    assert (blocked["prompt"], blocked["seed"], blocked["policy"]) == ("a person jumps", "1", "block")
    assert sanitized["policy"] == "sanitize" and take_audit["prompt"] == "a person walks forward"
    assert "At generation" in take_audit["note"] and ("They agree" in take_audit["note"]
                                                      or "They differ because" in take_audit["note"])
    assert kata_audit["action"] == kata.name and "no generation record" in kata_audit["note"]
    assert all(r["who"] and r["time"] and r["server"] == tiny_server.url for r in rows)
    print(f"\nsafety report: {out}\n" + out.read_text(encoding="utf-8"))
