"""Edit operators of the add-on (Regenerate Range, Extend Take, In-between) on the real bpy wheel against a real
`safemotion serve` (tiny random LCR model): each writes a new take with its safety record, the source take's action
stays as it was, and bad input writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon_support import addon, clean_scene, tiny_server, use_server  # noqa: E402,F401 (fixtures)

FRAMES = 80  # 4 s at 20 fps


@pytest.fixture
def scene(addon, clean_scene, tiny_server):
    """A clean scene talking to the module's server, with one generated take (seed 8) starting at frame 11."""
    use_server(tiny_server.url, timeout=120)
    settings = clean_scene.safemotion
    settings.prompt, settings.seconds, settings.random_seed, settings.policy = "a person walks", 4.0, False, "SANITIZE"
    settings.seed, settings.variations = 8, 1
    clean_scene.frame_current = 11
    settings.start_at_playhead = True
    assert bpy.ops.safemotion.generate() == {"FINISHED"}
    settings.prompt = "a person jumps"
    return clean_scene


def take_pose(addon, take) -> np.ndarray:
    """The take's joints read back from its action [T, 24, 3]."""
    motion = addon.ops_motion.read_smpl_take(take.armature, bpy.data.actions[take.action_name])
    return addon.ops_motion.take_joints(motion)


def test_regenerate_range_writes_a_new_take_from_the_preview_range(addon, scene):
    settings = scene.safemotion
    source = settings.takes[0]
    before = take_pose(addon, source)
    scene.use_preview_range = True
    scene.frame_preview_start, scene.frame_preview_end = 11 + 40, 11 + 59  # take frames 40:60
    assert bpy.ops.safemotion.regenerate_range() == {"FINISHED"}
    assert len(settings.takes) == 2
    new = settings.takes[1]
    assert settings.active_take == 1 and new.frames == FRAMES and new.frame_start == 11
    assert new.action_name != source.action_name and new.prompt == "a person jumps"
    assert new.safety.screened and new.safety.decision in ("pass", "sanitized")
    np.testing.assert_array_equal(take_pose(addon, settings.takes[0]), before)  # the source take is untouched
    after = take_pose(addon, new)
    # outside the regenerated tokens (36:64) and their blend windows the new take is the source take
    np.testing.assert_allclose(after[:28], before[:28], atol=2e-3)
    np.testing.assert_allclose(after[72:], before[72:], atol=2e-3)
    assert np.abs(after[40:60] - before[40:60]).max() > 0.01
    assert new.seam_warnings == ""  # the tiny model's seams hold the server's limit


def test_regenerate_range_uses_selected_keyframes_without_a_preview_range(addon, scene):
    settings = scene.safemotion
    action = bpy.data.actions[settings.takes[0].action_name]
    fcurves = addon.ops_edit._fcurves(action, settings.takes[0].armature)
    for fcurve in fcurves:
        for key in fcurve.keyframe_points:
            key.select_control_point = False
    with pytest.raises(RuntimeError, match="preview range"):
        bpy.ops.safemotion.regenerate_range()
    assert len(settings.takes) == 1
    for key in fcurves[0].keyframe_points:
        key.select_control_point = 31 <= key.co.x <= 50
    assert bpy.ops.safemotion.regenerate_range() == {"FINISHED"}
    assert len(settings.takes) == 2 and settings.takes[1].frames == FRAMES


def test_extend_and_inbetween_write_new_takes(addon, scene):
    settings = scene.safemotion
    assert bpy.ops.safemotion.extend_take(seconds=1.0, at="start") == {"FINISHED"}
    extended = settings.takes[1]
    assert extended.frames == FRAMES + 20 and extended.frame_start == 11 - 20
    settings.active_take = 0
    assert bpy.ops.safemotion.extend_take(seconds=2.0) == {"FINISHED"}
    assert settings.takes[2].frames == FRAMES + 40 and settings.takes[2].frame_start == 11
    settings.active_take = 0  # the first take, then the next one in the list
    assert bpy.ops.safemotion.inbetween(seconds=1.0) == {"FINISHED"}
    between = settings.takes[3]
    assert between.frames == FRAMES + 20 + FRAMES + 20 and between.frame_start == 11


def test_a_take_at_another_frame_rate_is_refused_and_nothing_is_written(addon, scene):
    settings = scene.safemotion
    actions = len(bpy.data.actions)
    scene.render.fps = 30
    scene.use_preview_range = True
    scene.frame_preview_start, scene.frame_preview_end = 20, 40
    with pytest.raises(RuntimeError, match="30 fps but the model works at 20 fps"):
        bpy.ops.safemotion.regenerate_range()
    assert len(settings.takes) == 1 and len(bpy.data.actions) == actions
    scene.render.fps = 20
    settings.prompt = "  "
    with pytest.raises(RuntimeError, match="Type a prompt first"):
        bpy.ops.safemotion.extend_take()
    assert len(settings.takes) == 1


def test_inbetween_takes_the_two_selected_nla_strips_in_time_order(addon, scene):
    settings = scene.safemotion
    settings.prompt, settings.seed = "a person walks", 12
    scene.frame_current = 200
    assert bpy.ops.safemotion.generate() == {"FINISHED"}
    first, second = settings.takes[0], settings.takes[1]
    for take in (second, first):  # strips created out of order: the in-between follows their frames
        rig = take.armature
        track = rig.animation_data.nla_tracks.new()
        strip = track.strips.new(take.name, take.frame_start, bpy.data.actions[take.action_name])
        strip.select = True
    settings.active_take = 1
    settings.prompt = "a person turns"
    assert bpy.ops.safemotion.inbetween(seconds=1.0) == {"FINISHED"}
    between = settings.takes[2]
    assert between.frame_start == first.frame_start == 11 and between.frames == FRAMES + 20 + FRAMES


def test_a_take_reads_back_the_same_while_another_take_is_active_on_its_armature(addon, scene):
    settings = scene.safemotion
    before = take_pose(addon, settings.takes[0])
    settings.prompt = "a person walks"
    for seed in (9, 10, 11):  # walks fit bodies within 2 cm of each other: they share the SMPL armature
        settings.seed = seed
        assert bpy.ops.safemotion.generate() == {"FINISHED"}
    shared = [take for take in settings.takes[1:] if take.armature == settings.takes[0].armature]
    assert shared, "no later walk reused the first take's armature"
    assert settings.takes[0].armature.animation_data.action.name == settings.takes[-1].action_name
    np.testing.assert_array_equal(take_pose(addon, settings.takes[0]), before)
    assert np.abs(take_pose(addon, shared[0]) - before).max() > 0.01


def test_an_edit_sends_the_takes_ids_and_keeps_their_flags(addon, scene):
    settings = scene.safemotion
    source = settings.takes[0]
    ids = [int(i) for i in source.base_tokens.split(",")]
    assert len(ids) == FRAMES // 4 and all(0 <= i < 64 for i in ids)  # column 0 of the server's tokens
    source.base_tokens = ",".join(["0"] * 20)  # code 0 is removed in the tiny model: every kept token carries a hit
    scene.use_preview_range = True
    scene.frame_preview_start, scene.frame_preview_end = 11 + 40, 11 + 59  # take frames 40:60, tokens 9-15 redone
    assert bpy.ops.safemotion.regenerate_range() == {"FINISHED"}
    new = settings.takes[1]
    kept = list(range(9)) + list(range(16, 20))
    assert new.safety.flagged and new.safety.decision == "sanitized"
    assert set(kept) <= set(json.loads(new.safety.record_json)["hit_tokens"])
    assert [int(i) for i in new.base_tokens.split(",")[:9] + new.base_tokens.split(",")[16:]] == [0] * 13
    source.base_tokens = ",".join(["0"] * 19)  # ids of another take: refused, nothing written
    settings.active_take = 0
    actions = len(bpy.data.actions)
    with pytest.raises(RuntimeError, match="19 base_tokens for 80 frames"):
        bpy.ops.safemotion.regenerate_range()
    assert len(settings.takes) == 2 and len(bpy.data.actions) == actions


def test_seams_the_server_could_not_smooth_are_reported_and_kept_on_the_new_take(addon, scene, tmp_path, monkeypatch):
    # The tiny model's seams hold the served limit (0.119); an in-process server whose editor asks for the impossible
    # (1e-6) answers with seam warnings, and the add-on writes that answer like an edit's.
    from fastapi.testclient import TestClient
    from server_support import build_tiny_lcr_model

    from safemotion.edit import EditSettings
    from safemotion.serve.app import create_app
    from safemotion.serve.settings import ServerSettings

    settings = ServerSettings(model=str(build_tiny_lcr_model(tmp_path / "tiny-lcr")), data_dir=tmp_path / "data",
                              device="cpu", threads=1)
    source, _ = addon.ops_edit.take_source(scene.safemotion.takes[0])
    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr(client.app.state.server.engine.service.editor, "settings",
                            EditSettings(seam_limit=1e-6, seam_retries=1))
        answer = client.post("/v1/edit", json={"source": source, "prompt": "a person jumps",
                                               "frames": [[40, 60]]}).json()
    warnings = answer["motions"][0]["seams"]["warnings"]
    assert [w.split(" jumps")[0] for w in warnings] == ["the seam at frame 36", "the seam at frame 64"]
    motions = [addon.ops_generate.decode_motion(m, f"motion {i}") for i, m in enumerate(answer["motions"])]
    outcome = addon.ops_generate.apply_motions(bpy.context, scene, motions, 11, answer["model"], policy="sanitize")
    take = scene.safemotion.takes[1]
    assert take.seam_warnings.split("\n") == warnings
    assert [w for w in outcome.warnings if "seam" in w] == [f"Take '{take.name}' (from scene frame 11): {w}"
                                                           for w in warnings]
