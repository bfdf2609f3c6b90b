"""Writes that keep their word: every failing SafeMotion operator leaves the file exactly as it was.

Each case sets up a scene with something in it (an SMPL take, the demo rig with the user's own action, a stick rig,
markers, a take, a finished batch), takes a census of the file (`scene_guard.Census`: data-blocks, markers, frame
range, the SafeMotion lists, each object's action and NLA tracks, custom properties), runs one operator in a way that
must fail, and compares the census afterwards. Some failures are found before anything is written (bad prompt, no
target, a preset that does not fit); others only while writing (the retarget maths refusing a rig whose hips are its
lowest point, after the SMPL armature, action and take were already made) and are taken back by the guard.
"""

from __future__ import annotations

import socket

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


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class Scene:
    """What every case starts from."""

    def __init__(self, server_url: str):
        armature, smpl_math = addon_module("armature"), addon_module("smpl_math")
        use_server(server_url, timeout=20.0)
        scene = bpy.context.scene
        settings = scene.safemotion
        settings.prompt, settings.seconds, settings.random_seed, settings.seed = "a person walks", 2.0, False, 8
        pose, transl = synthetic_motion(20, seed=3)
        self.smpl = armature.build_smpl_armature("SMPL take", smpl_math.JOINT_NAMES, smpl_math.PARENTS,
                                                 rest_skeleton())
        self.take_action = armature.apply_smpl_motion(self.smpl, pose, transl, fps=20, action_name="take")
        self.demo = armature.build_demo_rig("Demo")
        own = bpy.data.actions.new("the user's own action")  # one key: too short to audit
        addon_module("keyframes").write_keys(self.demo, own, {('pose.bones["mixamorig:Hips"].location', 0): [0.0]},
                                             [1.0])
        # A rig without an action whose stored mapping names a bone that was renamed since.
        self.bare = armature.build_demo_rig("Bare")
        addon_module("mapping_editor").store_mapping(self.bare, armature.fit_target(self.bare, "mixamo").mapping)
        self.bare.data.bones["mixamorig:Hips"].name = "Pelvis"
        # Hips at the rig's lowest point: the retarget maths refuses it (no hip height) only once it runs.
        self.stick = armature.build_armature("Stick", [armature.BoneSpec("a", (0, 0, 0), (0, 0, 1)),
                                                       armature.BoneSpec("b", (0, 0, 1), (0, 0, 2), "a")])
        addon_module("mapping_editor").store_mapping(self.stick, {"pelvis": "a", "spine1": "b"})
        stick_motion = bpy.data.actions.new("stick motion")
        addon_module("keyframes").write_keys(self.stick, stick_motion,
                                             {('pose.bones["b"].rotation_quaternion', 0): [1.0, 0.9]}, [1.0, 10.0])
        scene.timeline_markers.new("user marker", frame=5)
        take = settings.takes.add()
        take.name, take.armature, take.action_name = "gone", self.smpl, "an action that was deleted"
        take = settings.takes.add()
        take.name, take.armature, take.action_name = "walk", self.smpl, self.take_action.name
        take.frames, take.frame_start = len(pose), 1
        scene.frame_start, scene.frame_end = 1, 120


def generate():
    bpy.ops.safemotion.generate()


def case_blank_prompt(s):
    bpy.context.scene.safemotion.prompt = "   "
    generate()


def case_prompt_too_long(s):
    bpy.context.scene.safemotion.prompt = "a person walks " * 27  # 405 characters; the server takes 300
    generate()


def case_prompt_with_control_character(s):
    bpy.context.scene.safemotion.prompt = "a person\x07 walks"
    generate()


def case_generate_server_down(s):
    use_server(closed_port_url())
    generate()


def case_generate_while_scene_busy(s):
    guard = addon_module("scene_guard")
    writer = object()  # a long-running operation in flight
    guard.claim(bpy.context.scene, writer, "A batch")
    try:
        generate()
    finally:
        guard.release(writer)


def case_apply_take_whose_action_is_gone(s):
    bpy.ops.safemotion.apply_take(index=0)


def case_discard_take_that_does_not_exist(s):
    bpy.ops.safemotion.discard_take(index=5)


def case_retarget_without_target(s):
    select(s.smpl)
    bpy.ops.safemotion.retarget_action()


def case_retarget_with_a_preset_that_does_not_fit(s):
    select(s.smpl, s.demo)
    bpy.ops.safemotion.retarget_action(preset="ue5")


def case_retarget_refused_by_the_maths(s):
    select(s.smpl, s.stick)
    bpy.ops.safemotion.retarget_action()


def case_retarget_with_a_stale_stored_mapping(s):
    select(s.smpl, s.bare)
    bpy.ops.safemotion.retarget_action()


def case_retarget_from_a_rig_that_is_not_smpl(s):
    select(s.demo, s.stick)
    bpy.ops.safemotion.retarget_action()


def case_audit_rig_without_action(s):
    select(s.bare)
    bpy.ops.safemotion.audit_action()


def case_audit_rig_mapped_to_two_joints(s):
    select(s.stick)
    bpy.ops.safemotion.audit_action()


def case_audit_server_down(s):
    use_server(closed_port_url())
    select(s.smpl)
    bpy.ops.safemotion.audit_action()


def case_audit_single_frame_action(s):
    select(s.demo)
    bpy.ops.safemotion.audit_action()


def case_audit_a_mesh(s):
    select(next(o for o in bpy.data.objects if o.type == "MESH"))
    bpy.ops.safemotion.audit_action()


def case_export_into_a_missing_folder(s, tmp_path):
    select(s.smpl)
    bpy.ops.safemotion.export_motion(format="BVH", filepath=str(tmp_path / "missing" / "take.bvh"))


def case_export_without_action(s, tmp_path):
    select(s.bare)
    bpy.ops.safemotion.export_motion(format="FBX", filepath=str(tmp_path / "stick.fbx"))


def case_mapping_with_a_doubled_bone(s):
    editor = bpy.context.scene.safemotion_mapping
    editor.rig = s.demo
    editor.slots["left_wrist"].bone = editor.slots["right_wrist"].bone
    bpy.ops.safemotion.mapping_use()


def case_mapping_fill_from_a_preset_without_matches(s):
    bpy.context.scene.safemotion_mapping.rig = s.demo
    bpy.ops.safemotion.mapping_fill(source="rigify_def")


def case_mapping_load_missing_preset(s):
    bpy.context.scene.safemotion_mapping.rig = s.demo
    bpy.ops.safemotion.mapping_load_preset(name="never saved")


def case_mapping_save_preset_with_a_path(s):
    bpy.context.scene.safemotion_mapping.rig = s.demo
    bpy.ops.safemotion.mapping_save_preset(name="../../escape")


def case_batch_with_a_bad_line(s, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,seconds\na person walks,2\na person runs,15\n")
    batch = bpy.context.scene.safemotion_batch
    batch.source, batch.filepath = "FILE", str(path)
    bpy.ops.safemotion.batch_generate()


def case_batch_onto_an_unmappable_target(s, tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text("a person walks\n")
    scene = bpy.context.scene
    scene.safemotion.target_armature, scene.safemotion.bone_preset = s.demo, "ue5"
    scene.safemotion_batch.source, scene.safemotion_batch.filepath = "FILE", str(path)
    bpy.ops.safemotion.batch_generate()


def case_batch_server_down(s, tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text("a person walks\na person jumps\n")
    use_server(closed_port_url())
    scene = bpy.context.scene
    scene.safemotion_batch.source, scene.safemotion_batch.filepath = "FILE", str(path)
    bpy.ops.safemotion.batch_generate()


def case_resume_without_a_batch(s):
    bpy.ops.safemotion.batch_resume()


def case_regenerate_range_server_down(s):
    bpy.ops.safemotion.regenerate_range(index=1)  # no preview range: the take's selected keys


def case_extend_a_take_whose_action_is_gone(s):
    bpy.ops.safemotion.extend_take(index=0)


def case_inbetween_while_scene_busy(s):
    guard = addon_module("scene_guard")
    writer = object()  # a long-running operation in flight
    guard.claim(bpy.context.scene, writer, "A generation")
    try:
        bpy.ops.safemotion.inbetween(index=1, second=0)
    finally:
        guard.release(writer)


def case_report_into_a_missing_folder(s, tmp_path):
    bpy.ops.safemotion.export_safety_report(filepath=str(tmp_path / "missing" / "report.csv"))


CASES = [value for name, value in sorted(globals().items()) if name.startswith("case_")]


def check_unchanged(scene_guard, case, *args) -> None:
    """Run a case that must fail and check the census before and after."""
    before = scene_guard.Census.take()
    with pytest.raises(RuntimeError):
        case(*args)
    assert before.differences(scene_guard.Census.take()) == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_a_failing_operator_leaves_the_file_as_it_was(addon, clean_scene, tmp_path, case):
    s = Scene(closed_port_url())  # the cases that reach a server find none: they fail there
    check_unchanged(addon.scene_guard, case, *((s, tmp_path) if case.__code__.co_argcount == 2 else (s,)))
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["bad.csv"], ["ok.txt"])


def test_a_generation_refused_while_writing_is_taken_back(addon, clean_scene, tiny_server):
    """The server's motion arrives, the SMPL armature, action and take are written, then the solve on the evaluated
    rig finds that a Limit Rotation constraint keeps the left forearm from following (it passes the up-front checks:
    it turns 20 degrees of the 30-degree probe): everything is taken back, the rig's custom properties (an IK/FK
    switch the solve sets to FK while it runs) included, and nothing is reported as written."""
    s = Scene(tiny_server.url)
    limited = addon.armature.build_demo_rig("Limited")
    limit = limited.pose.bones["mixamorig:LeftForeArm"].constraints.new("LIMIT_ROTATION")
    limit.use_limit_x = limit.use_limit_y = limit.use_limit_z = True
    limit.min_x, limit.max_x = -0.35, 0.35
    limit.owner_space = "LOCAL"
    limited.pose.bones["mixamorig:LeftArm"]["IK_FK"] = 0.0
    limited["note"] = "the user's own"
    bpy.context.scene.safemotion.target_armature = limited
    check_unchanged(addon.scene_guard, bpy.ops.safemotion.generate)
    status = bpy.context.scene.safemotion.status
    assert status.startswith("Nothing written: ") and "'mixamorig:LeftForeArm'" in status, status
    assert limited.pose.bones["mixamorig:LeftArm"]["IK_FK"] == 0.0


def test_there_are_at_least_twenty_cases():
    assert len(CASES) + 1 >= 20


def test_the_guard_takes_back_what_a_failure_wrote(addon, clean_scene):
    """keep_file_on_failure removes added data-blocks, markers and list entries and restores what was changed."""
    scene_guard = addon.scene_guard
    s = Scene("http://127.0.0.1:9")
    scene = bpy.context.scene
    s.demo["note"], scene["shot"] = "the user's own", {"number": 12, "takes": [1, 2]}
    s.demo.pose.bones["mixamorig:LeftForeArm"]["IK_FK"] = 0.0
    stored = s.bare.data[addon.mapping_editor.MAPPING_PROPERTY]
    before = scene_guard.Census.take()
    with pytest.raises(KeyError), scene_guard.keep_file_on_failure():
        addon.armature.build_demo_rig("Another")
        s.demo.animation_data.action = bpy.data.actions.new("replacement")
        s.take_action["safemotion_safety"] = "{}"
        s.demo["note"] = "changed"  # custom properties changed, removed and added on objects, armatures, scenes
        del s.bare.data[addon.mapping_editor.MAPPING_PROPERTY]
        scene["shot"]["takes"] = [3]
        scene["added"] = 1.5
        s.demo.pose.bones["mixamorig:LeftForeArm"]["IK_FK"] = 1.0
        scene.timeline_markers.new("new", frame=9)
        scene.timeline_markers.remove(scene.timeline_markers[0])
        scene.safemotion.takes.add()
        scene.frame_end = 400
        raise KeyError("something failed while writing")
    assert before.differences(scene_guard.Census.take()) == []
    assert s.demo.animation_data.action.name == "the user's own action"
    assert s.demo["note"] == "the user's own" and s.bare.data[addon.mapping_editor.MAPPING_PROPERTY] == stored
    assert scene["shot"].to_dict() == {"number": 12, "takes": [1, 2]} and "added" not in scene
    assert s.demo.pose.bones["mixamorig:LeftForeArm"]["IK_FK"] == 0.0
