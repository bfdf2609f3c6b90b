"""The bone-mapping editor on the real bpy wheel: rigs whose bone names no preset knows (generic `bone_000…`, German)
are mapped by hand in the editor's rows, stored with the rig and used by Retarget and Generate; presets round-trip
through the user's presets folder; a rig Generate cannot map keeps its SMPL take and opens the editor."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon_support import (  # noqa: E402
    CheckingLayout,
    addon,  # noqa: F401 (fixture)
    addon_module,
    clean_scene,  # noqa: F401 (fixture)
    rest_skeleton,
    select,
    synthetic_motion,
    tiny_server,  # noqa: F401 (fixture)
    use_server,
)

GERMAN = {"Hips": "Hüfte", "Spine": "Wirbelsäule_1", "Spine1": "Wirbelsäule_2", "Spine2": "Brustkorb", "Neck": "Hals",
          "Head": "Kopf", "Shoulder": "Schulter", "Arm": "Oberarm", "ForeArm": "Unterarm", "Hand": "Hand",
          "UpLeg": "Oberschenkel", "Leg": "Unterschenkel", "Foot": "Fuß", "ToeBase": "Zehen"}


def german(name: str) -> str:
    """The German bone name of a demo-rig (Mixamo) bone: LeftForeArm -> Unterarm.L."""
    for side, suffix in (("Left", ".L"), ("Right", ".R")):
        if name.startswith(side):
            return GERMAN[name[len(side):]] + suffix
    return GERMAN[name]


def renamed_demo_rig(name: str, rename) -> tuple[bpy.types.Object, dict[str, str]]:
    """The demo rig's bones (same geometry) under other names; returns the rig and Mixamo name -> new name."""
    armature = addon_module("armature")
    specs = armature.demo_rig_bones(prefix="")
    names = {spec.name: rename(k, spec.name) for k, spec in enumerate(specs)}
    bones = [armature.BoneSpec(names[s.name], s.head, s.tail, names[s.parent] if s.parent else None) for s in specs]
    return armature.build_armature(name, bones), names


def smpl_take(frames: int = 24):
    """An SMPL armature keyed with a synthetic motion, active and selected."""
    armature, smpl_math = addon_module("armature"), addon_module("smpl_math")
    pose, transl = synthetic_motion(frames, seed=5)
    rig = armature.build_smpl_armature("SMPL take", smpl_math.JOINT_NAMES, smpl_math.PARENTS, rest_skeleton())
    armature.apply_smpl_motion(rig, pose, transl, fps=20, action_name="take")
    return rig


def fill_by_hand(editor, names: dict[str, str]) -> None:
    """What an artist does in the rows: pick, for every SMPL joint, the bone the Mixamo preset would drive."""
    retarget = addon_module("retarget")
    mixamo = {role: candidates[0] for role, candidates in retarget.PRESETS["mixamo"].items()}
    for slot in editor.slots:
        slot.bone = names[mixamo[slot.name]] if slot.name in mixamo else ""


def rotation_keys(rig, action, bone: str) -> np.ndarray:
    keyframes = addon_module("keyframes")
    rig.animation_data.action = action
    return np.stack([keyframes.read_keys(action, rig, f'pose.bones["{bone}"].rotation_quaternion', i)[1]
                     for i in range(4)], -1)


def test_a_german_named_rig_is_mapped_by_the_name_matcher_and_in_the_editor(addon, clean_scene):
    editor_module = addon.mapping_editor
    rig, names = renamed_demo_rig("Rig", lambda k, name: german(name))
    source = smpl_take()
    select(source, rig)
    assert bpy.ops.safemotion.retarget_action() == {"FINISHED"}  # Auto-detect: the fuzzy name matcher knows German
    scene = bpy.context.scene
    scene.safemotion.target_armature = rig
    assert bpy.ops.safemotion.mapping_edit() == {"FINISHED"}
    editor = scene.safemotion_mapping
    assert bpy.ops.safemotion.mapping_fill(source="AUTO") == {"FINISHED"}
    mapping = editor_module.editor_mapping(editor)
    assert mapping["pelvis"] == names["Hips"] and mapping["left_wrist"] == names["LeftHand"]
    assert addon.retarget.mapping_problems(mapping, list(names.values())) == []


@pytest.mark.parametrize("kind", ["generic"])
def test_a_rig_no_preset_knows_is_mapped_in_the_editor_and_retargeted(addon, clean_scene, kind):
    editor_module = addon.mapping_editor
    rig, names = renamed_demo_rig("Rig", lambda k, name: f"bone_{k:03d}")
    source = smpl_take()
    select(source, rig)
    with pytest.raises(RuntimeError, match="no retarget preset .* matches .*open SafeMotion ▸ Bone Mapping"):
        bpy.ops.safemotion.retarget_action()

    scene = bpy.context.scene
    scene.safemotion.target_armature = rig
    assert bpy.ops.safemotion.mapping_edit() == {"FINISHED"}
    editor = scene.safemotion_mapping
    assert editor.rig == rig and [s.name for s in editor.slots] == list(editor_module.EDITOR_ROLES)
    assert all(s.bone == "" for s in editor.slots)  # nothing to detect
    with pytest.raises(RuntimeError, match="no retarget preset"):
        bpy.ops.safemotion.mapping_fill(source="AUTO")

    fill_by_hand(editor, names)
    editor.slots["left_wrist"].bone = editor.slots["right_wrist"].bone  # a slip: one bone for two joints
    mapping = editor_module.editor_mapping(editor)
    errors = addon.retarget.mapping_problems(mapping, list(names.values()))
    assert errors == [f"bone {names['RightHand']!r} is chosen for 2 joints (left_wrist, right_wrist): pick one"]
    assert addon.retarget.missing_roles(mapping) == []
    with pytest.raises(RuntimeError, match="is chosen for 2 joints .*nothing was stored"):
        bpy.ops.safemotion.mapping_use()
    assert editor_module.MAPPING_PROPERTY not in rig.data
    editor.slots["left_wrist"].bone = ""
    assert addon.retarget.missing_roles(editor_module.editor_mapping(editor)) == ["left_wrist"]
    calls: list = []
    editor_module.draw_mapping_editor(CheckingLayout(calls), bpy.context)  # real names in the sidebar's editor
    assert [text for kind, text in calls if kind == "prop_search"] == list(editor_module.EDITOR_ROLES)
    assert ("label", "Unmapped (stay at rest): left_wrist") in calls
    assert {("operator", "safemotion.mapping_fill"), ("operator", "safemotion.mapping_use")} <= set(calls)
    editor.slots["left_wrist"].bone = names["LeftHand"]
    assert bpy.ops.safemotion.mapping_use() == {"FINISHED"}
    stored = json.loads(rig.data[editor_module.MAPPING_PROPERTY])
    assert len(stored) == 22 and stored["pelvis"] == names["Hips"]

    # Retarget with Auto-detect uses the stored mapping; the keys equal those on the Mixamo-named demo rig.
    select(source, rig)
    assert bpy.ops.safemotion.retarget_action() == {"FINISHED"}
    demo = addon.armature.build_demo_rig("Demo", prefix="")
    select(source, demo)
    assert bpy.ops.safemotion.retarget_action() == {"FINISHED"}
    mapped = bpy.data.actions["take (Rig)"]
    assert mapped.use_fake_user  # a retarget action survives saving
    for mixamo_name in ("Hips", "LeftForeArm", "RightUpLeg", "Head"):
        np.testing.assert_allclose(rotation_keys(rig, mapped, names[mixamo_name]),
                                   rotation_keys(demo, bpy.data.actions["take (Demo)"], mixamo_name), atol=1e-5)


def test_presets_round_trip_through_the_user_folder(addon, clean_scene):
    editor_module = addon.mapping_editor
    rig, names = renamed_demo_rig("Deutsch", lambda k, name: german(name))
    editor = bpy.context.scene.safemotion_mapping
    editor.rig = rig
    fill_by_hand(editor, names)
    mapping = editor_module.editor_mapping(editor)
    editor.preset_name = "Deutsches Rig"
    assert bpy.ops.safemotion.mapping_save_preset() == {"FINISHED"}
    path = editor_module.presets_folder() / "Deutsches Rig.json"
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text(encoding="utf-8")) == mapping
    assert "Deutsches Rig" in editor_module.preset_names()

    editor_module.fill_slots(editor, {})
    assert bpy.ops.safemotion.mapping_load_preset(name="Deutsches Rig") == {"FINISHED"}
    assert editor_module.editor_mapping(editor) == mapping

    # The preset names German bones: a rig without them refuses it and keeps its rows.
    generic, _ = renamed_demo_rig("Generic", lambda k, name: f"bone_{k:03d}")
    editor.rig = generic
    with pytest.raises(RuntimeError, match="Preset 'Deutsches Rig' not loaded: it does not fit 'Generic': the "
                                           "armature has no bones 'Hüfte' \\(pelvis\\), .* and 19 more"):
        bpy.ops.safemotion.mapping_load_preset(name="Deutsches Rig")
    assert editor_module.editor_mapping(editor) == {}
    with pytest.raises(RuntimeError, match="no preset 'missing'"):
        bpy.ops.safemotion.mapping_load_preset(name="missing")
    with pytest.raises(RuntimeError, match="no slashes"):
        bpy.ops.safemotion.mapping_save_preset(name="../outside")


def test_generate_keeps_the_smpl_take_of_an_unmappable_rig_and_opens_the_editor(addon, clean_scene, tiny_server):
    use_server(tiny_server.url)
    rig, names = renamed_demo_rig("Generic", lambda k, name: f"bone_{k:03d}")
    settings = clean_scene.safemotion
    settings.prompt, settings.seconds, settings.random_seed, settings.seed = "a person walks forward", 2.0, False, 8
    settings.target_armature = rig
    assert bpy.ops.safemotion.generate() == {"FINISHED"}
    take = settings.takes[0]
    assert take.armature is not None and bpy.data.actions.get(take.action_name) is not None
    assert take.target_action_name == "" and rig.animation_data is None
    editor = clean_scene.safemotion_mapping
    assert editor.rig == rig and "no retarget preset" in editor.needed

    fill_by_hand(editor, names)
    assert bpy.ops.safemotion.mapping_use() == {"FINISHED"}
    assert editor.needed == ""
    select(take.armature, rig)
    assert bpy.ops.safemotion.retarget_action() == {"FINISHED"}
    assert rig.animation_data.action.name == f"{take.action_name} (Generic)"
    assert bpy.ops.safemotion.generate() == {"FINISHED"}  # the next take is retargeted with the stored mapping
    assert settings.takes[1].target_action_name == f"Generic {settings.takes[1].name}"
