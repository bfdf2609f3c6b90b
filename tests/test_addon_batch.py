"""Batch generation on the real bpy wheel against a real `safemotion serve` (tiny random LCR model): prompt files,
one NLA track per prompt, cancel, and resume after Blender and the server restart."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon_support import (  # noqa: E402
    SCENE_FPS,
    CheckingLayout,
    addon,  # noqa: F401 (fixture)
    addon_module,
    clean_scene,  # noqa: F401 (fixture)
    tiny_server,  # noqa: F401 (fixture)
    use_server,
)


@pytest.fixture(scope="module")
def ops(addon):
    """The add-on's ops_batch module (registered with the add-on)."""
    return addon.ops_batch


@pytest.fixture(scope="module")
def batch_prompts(addon):
    """The add-on's pure prompt-list module."""
    return addon.batch_prompts


@pytest.fixture
def server(tiny_server, clean_scene):
    """The module's server, with the add-on pointed at it and the panel's seed fixed."""
    use_server(tiny_server.url)
    clean_scene.safemotion.random_seed = False
    clean_scene.safemotion.seed = 3
    return tiny_server


def client_for(server):
    return addon_module("client").BackendClient(server.url, timeout=30)


def nla_actions(obj) -> list[tuple[str, str, float]]:
    """(strip name, strip action name, strip start) of every strip of `obj`'s one NLA track, the batch track."""
    assert [t.name for t in obj.animation_data.nla_tracks] == [addon_module("ops_batch").BATCH_TRACK]
    return [(s.name, s.action.name, s.frame_start) for s in obj.animation_data.nla_tracks[0].strips]


def step_until(runner, applied: int, timeout: float = 30.0) -> None:
    """Step the runner (one prompt applied per step at most) until `applied` prompts are done."""
    deadline = time.monotonic() + timeout
    while sum(item.state == "DONE" for item in runner.batch.items) < applied:
        assert time.monotonic() < deadline, "the server did not finish the prompts in time"
        if runner.step(max_apply=1) == 0:
            time.sleep(0.05)


def start(ops, text: str, source: str = "prompts.txt"):
    """A runner on the current scene with a new batch of these prompts (nothing sent yet)."""
    scene = bpy.context.scene
    ops.start_batch(scene, addon_module("batch_prompts").parse_text(text, source), source)
    return ops.BatchRunner(scene, bpy.context)


# --- prompt files (pure) --------------------------------------------------------------------------------------------


def test_text_and_csv_prompts_parse_with_unique_names(batch_prompts, tmp_path):
    txt = tmp_path / "moves.txt"
    txt.write_text("# warm-up\n\nA person walks forward\n  a person jumps  \n# done\nA person walks forward!\n")
    prompts = batch_prompts.read_prompt_file(txt)
    assert [(p.line, p.prompt, p.name) for p in prompts] == [
        (3, "A person walks forward", "a_person_walks_forward"), (4, "a person jumps", "a_person_jumps"),
        (6, "A person walks forward!", "a_person_walks_forward_2")]
    assert all(p.seconds is None and p.seed is None for p in prompts)

    csv_file = tmp_path / "moves.csv"
    csv_file.write_bytes('\ufeffPrompt, Seconds ,seed,name\n"walks, then waves",2.5,,Wave Hello\n\n'
                         'jumps,,17,\n"spins ""fast""",1,,\n'.encode())
    prompts = batch_prompts.read_prompt_file(csv_file)
    assert [(p.line, p.prompt, p.seconds, p.seed, p.name) for p in prompts] == [
        (2, "walks, then waves", 2.5, None, "wave_hello"), (4, "jumps", None, 17, "jumps"),
        (5, 'spins "fast"', 1.0, None, "spins_fast")]


def test_names_are_slugged_short_and_never_collide(batch_prompts):
    long = " ".join(["cartwheel"] * 20)
    assert batch_prompts.slug("Ünïcode — café jump!") == "unicode_cafe_jump"
    assert batch_prompts.slug("???") == "prompt"
    assert len(batch_prompts.slug(long)) <= batch_prompts.MAX_NAME_CHARS
    assert batch_prompts.unique_names(["walk", "walk", "walk_2", "run", "walk"]) == [
        "walk", "walk_3", "walk_2", "run", "walk_4"]


@pytest.mark.parametrize("name, content, message", [
    ("p.csv", "prompt,seconds\nwalks,2\n\njumps,12\n", r"p\.csv:4: seconds is 12; allowed range is 0\.5-9\.8"),
    ("p.csv", "prompt,seconds\nwalks,0.2\n", r"p\.csv:2: seconds is 0\.2"),
    ("p.csv", "prompt,seconds\nwalks,fast\n", r"p\.csv:2: seconds 'fast' is not a number"),
    ("p.csv", "prompt,seed\nwalks,1\n ,2\n", r"p\.csv:3: empty prompt"),
    ("p.csv", "prompt,seed\nwalks,-1\n", r"p\.csv:2: seed is -1"),
    ("p.csv", "prompt,duration\nwalks,1\n", r"p\.csv:1: unknown column\(s\) 'duration'"),
    ("p.csv", "text,seconds\nwalks,1\n", r"p\.csv:1: the header has no 'prompt' column"),
    ("p.csv", "prompt\nwalks,1\n", r"p\.csv:2: 2 cells but the header has 1 columns"),
    ("p.csv", "prompt\n", r"p\.csv:1: the table has a header but no prompts"),
    ("p.csv", 'prompt\nwalks\n"two\nlines"\nruns\n', r"p\.csv:3: prompt has a control character \(U\+000A\)"),
    ("p.csv", 'prompt\nwalks\n"never closed\n', r"p\.csv:3: not valid CSV"),
    ("p.txt", "# only comments\n\n", r"p\.txt:1: no prompts"),
    ("p.txt", "walks\n\n" + "x" * 301 + "\n", r"p\.txt:3: prompt has 301 characters"),
    ("p.txt", "walks\tfast\n", r"p\.txt:1: prompt has a control character \(U\+0009\)"),
    ("p.json", "[]", r"unsupported prompt file type '\.json'"),
])
def test_bad_prompt_files_name_the_line(batch_prompts, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        batch_prompts.read_prompt_file(path)


def test_non_utf8_file_names_the_line(batch_prompts, tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"walks\njumps\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"latin\.txt:3: not UTF-8"):
        batch_prompts.read_prompt_file(path)


# --- batches against the server -------------------------------------------------------------------------------------


def test_txt_batch_lays_named_takes_one_after_another_in_prompt_order(ops, server, tmp_path):
    client_module = addon_module("client")
    path = tmp_path / "moves.txt"
    path.write_text("# three takes\na person walks forward\n\na person jumps\na person walks forward\n")
    scene = bpy.context.scene
    scene.frame_start = 7
    batch = scene.safemotion_batch
    batch.source, batch.filepath = "FILE", str(path)
    assert bpy.ops.safemotion.batch_generate() == {"FINISHED"}

    assert [(i.name, i.state, i.line, i.seed) for i in batch.items] == [
        ("a_person_walks_forward", "DONE", 2, 3), ("a_person_jumps", "DONE", 4, 3),
        ("a_person_walks_forward_2", "DONE", 5, 3)]
    assert len({i.job_id for i in batch.items}) == 1  # one server job for the whole batch
    rig = batch.smpl_armature
    assert rig is not None and len(rig.data.bones) == 24 and rig.animation_data.action is None
    # One track, the takes one after another in prompt order: each in its place (4 s = 81 frames, 5 left empty).
    assert [i.frame_start for i in batch.items] == [7, 93, 179]
    assert nla_actions(rig) == [(i.name, i.name, float(i.frame_start)) for i in batch.items]
    assert len(bpy.data.actions) == 3 and all(a.use_fake_user for a in bpy.data.actions)
    batch.active_item = 1  # selecting a prompt fits the timeline to its take
    assert (scene.use_preview_range, scene.frame_preview_start, scene.frame_preview_end) == (True, 93, 93 + 79)
    assert scene.frame_current == 93

    # Each action holds its own prompt's motion: the pelvis keys are the server's translation for that item.
    results = client_for(server).results(batch.items[0].job_id)["items"]
    keyframes = addon_module("keyframes")
    for item in batch.items:
        motion = results[item.job_index]["motions"][0]
        transl = client_module.decode_array(motion["smpl"]["transl"])
        frames, values = keyframes.read_keys(item.action, rig, 'pose.bones["pelvis"].location', 2)
        np.testing.assert_allclose(frames, item.frame_start + np.arange(motion["frames"]) * SCENE_FPS / motion["fps"])
        np.testing.assert_allclose(values, transl[:, 2], atol=1e-6)
        assert motion["frames"] == round(scene.safemotion.seconds * motion["fps"])
    rig.animation_data.action = None

    # The selected prompt's take is audited from its place on the track (the panel's button under the list).
    calls: list = []
    ops.draw_batch(CheckingLayout(calls), bpy.context)
    assert ("operator", "safemotion.audit_action") in calls
    jumps = batch.items[1].action
    assert bpy.ops.safemotion.audit_action(object_name=rig.name, action_name=jumps.name) == {"FINISHED"}
    report = json.loads(jumps[addon_module("ops_motion").AUDIT_PROPERTY])
    markers = [m for m in scene.timeline_markers if m.name.startswith(f"SafeMotion audit {jumps.name} ")]
    assert len(markers) == 2 * len(report["spans"]) and all(93 <= m.frame <= 93 + 79 for m in markers)
    entry = scene.safemotion.flagged[-1]
    assert (entry.event, entry.prompt, entry.action_name) == ("audit", "a person jumps", jumps.name)
    assert rig.animation_data.action is None  # the track plays again


def test_csv_batch_is_retargeted_onto_the_target_rig(ops, server, tmp_path):
    armature = addon_module("armature")
    path = tmp_path / "moves.csv"
    path.write_text("name,prompt,seconds,seed\nWalk,a person walks,2,11\n,a person waves,1.5,\n")
    scene = bpy.context.scene
    target = armature.build_demo_rig("Demo")
    own = bpy.data.actions.new("my own action")
    target.animation_data_create().action = own
    scene.safemotion.target_armature = target
    batch = scene.safemotion_batch
    batch.source, batch.filepath = "FILE", str(path)
    assert bpy.ops.safemotion.batch_generate() == {"FINISHED"}

    assert [(i.name, i.state, i.seconds, i.seed) for i in batch.items] == [
        ("walk", "DONE", 2.0, 11), ("a_person_waves", "DONE", 1.5, 3)]
    assert batch.smpl_armature is None and not any(o.name.startswith("SafeMotion batch") for o in scene.objects)
    assert nla_actions(target) == [("walk", "walk", 1.0), ("a_person_waves", "a_person_waves", 47.0)]
    assert target.animation_data.action == own  # the user's action is left in place
    results = client_for(server).results(batch.items[0].job_id)["items"]
    flagged = []
    for item, seconds in zip(batch.items, (2.0, 1.5)):
        motion = results[item.job_index]["motions"][0]
        # The model makes whole 4-frame units (0.2 s): 1.5 s comes back as 1.4 s.
        assert (motion["prompt"], motion["seed"]) == (item.prompt, item.seed)
        assert motion["seconds"] == pytest.approx(seconds, abs=0.2)
        first, last = item.action.frame_range
        assert round(last - first) + 1 == motion["frames"]  # one key per scene frame (both at 20 fps)
        assert 'pose.bones["mixamorig:LeftForeArm"].rotation_quaternion' in {
            fc.data_path for fc in _fcurves(item.action)}
        assert json.loads(item.action["safemotion_safety"]) == motion["safety"]
        if motion["safety"]["flagged"]:
            flagged.append(item.name)
    # Flagged prompts are in the scene's flagged list (the safety module's record of this file).
    assert [entry.name for entry in scene.safemotion.flagged] == flagged


def _fcurves(action):
    """All F-curves of an action: every layer, strip and channelbag (4.4+), or its legacy F-curve list (4.2, 4.3)."""
    if not hasattr(action, "layers"):
        return list(action.fcurves)
    return [fc for layer in action.layers for strip in layer.strips for bag in strip.channelbags
            for fc in bag.fcurves]


def test_text_block_batch_and_a_bad_file_writes_nothing(ops, server, tmp_path):
    scene = bpy.context.scene
    batch = scene.safemotion_batch
    text = bpy.data.texts.new("Prompts")
    text.write("a person bows\n")
    batch.source, batch.text = "TEXT", text
    assert bpy.ops.safemotion.batch_generate() == {"FINISHED"}
    assert [(i.name, i.state) for i in batch.items] == [("a_person_bows", "DONE")]
    before = (set(bpy.data.actions), set(bpy.data.objects), [(i.name, i.state, i.job_id) for i in batch.items])

    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,seconds\na person walks,2\na person runs,15\n")
    batch.source, batch.filepath = "FILE", str(bad)
    with pytest.raises(RuntimeError, match=r"bad\.csv:3: seconds is 15; allowed range is 0\.5-9\.8"):
        bpy.ops.safemotion.batch_generate()
    assert (set(bpy.data.actions), set(bpy.data.objects), [(i.name, i.state, i.job_id) for i in batch.items]) == before
    assert batch.origin == "Prompts"

    # A target whose bones the chosen preset cannot drive is refused before anything is sent.
    target = addon_module("armature").build_demo_rig("Demo")
    before = (set(bpy.data.actions), set(bpy.data.objects), [(i.name, i.state, i.job_id) for i in batch.items])
    scene.safemotion.target_armature, scene.safemotion.bone_preset = target, "ue5"
    batch.source = "TEXT"
    with pytest.raises(RuntimeError, match="no bone is mapped to 'pelvis'"):
        bpy.ops.safemotion.batch_generate()
    assert (set(bpy.data.actions), set(bpy.data.objects), [(i.name, i.state, i.job_id) for i in batch.items]) == before
    assert target.animation_data is None


def test_block_policy_withholds_flagged_prompts(ops, server, tmp_path):
    path = tmp_path / "mixed.csv"
    # With the tiny model, seed 2 at 4 s stays under the flag threshold and seeds 1 and 3 go over it.
    path.write_text("prompt,seconds,seed\na person walks,4,2\na person jumps,4,1\na person waves,4,2\n"
                    "a person sits,4,3\n")
    scene = bpy.context.scene
    scene.safemotion.policy = "BLOCK"
    scene.safemotion_batch.source, scene.safemotion_batch.filepath = "FILE", str(path)
    assert bpy.ops.safemotion.batch_generate() == {"FINISHED"}
    batch = scene.safemotion_batch
    assert batch.policy == "block"
    results = client_for(server).results(batch.items[0].job_id)["items"]
    motions = {item.name: results[item.job_index]["motions"][0] for item in batch.items}
    blocked = [name for name, motion in motions.items() if motion["smpl"] is None]
    print(f"\nblock policy: {len(blocked)} of {len(batch.items)} prompts withheld")
    assert 0 < len(blocked) < len(batch.items)
    assert [i.name for i in batch.items if i.state == "BLOCKED"] == blocked
    assert all(i.state == "DONE" for i in batch.items if i.name not in blocked)
    for item in batch.items:
        if item.state == "BLOCKED":
            assert item.action is None and item.message == motions[item.name]["safety"]["reason"]
    assert sorted(a.name for a in bpy.data.actions) == sorted(i.name for i in batch.items if i.state == "DONE")
    assert not ops.batch_unfinished(batch)  # blocked prompts are final: nothing to resume


def test_cancel_keeps_finished_prompts_only_and_resume_completes(ops, server):
    runner = start(ops, "a person walks\na person jumps\na person sits\na person kicks\n")
    step_until(runner, applied=1)
    job_id = runner.batch.items[0].job_id
    assert bpy.ops.safemotion.batch_cancel() == {"FINISHED"}  # the panel's button (Esc in the modal does the same)
    batch = runner.batch
    assert sorted(i.state for i in batch.items) == ["CANCELLED"] * 3 + ["DONE"]
    done = next(i for i in batch.items if i.state == "DONE")
    assert [a.name for a in bpy.data.actions] == [done.name]
    assert [s[0] for s in nla_actions(batch.smpl_armature)] == [done.name]
    deadline = time.monotonic() + 30  # the cancel request goes out from a request thread
    while client_for(server).job(job_id)["status"] not in ("cancelled", "done"):  # done: finished before the cancel
        assert time.monotonic() < deadline, "the server job was not cancelled"
        time.sleep(0.1)

    first_action = done.action
    assert bpy.ops.safemotion.batch_resume() == {"FINISHED"}
    assert [i.state for i in batch.items] == ["DONE"] * 4
    assert done.action == first_action and done.job_id == job_id  # not generated again
    assert len({i.job_id for i in batch.items if i != done} - {job_id}) == 1  # the rest went as one new job
    assert sorted(a.name for a in bpy.data.actions) == sorted(i.name for i in batch.items)
    assert [s[0] for s in nla_actions(batch.smpl_armature)] == [i.name for i in batch.items]
    with pytest.raises(RuntimeError, match="No unfinished batch"):
        bpy.ops.safemotion.batch_resume()
    with pytest.raises(RuntimeError, match="No batch prompt is waiting"):
        bpy.ops.safemotion.batch_cancel()

    # The panel section and its list draw with real property, operator, list and icon names.
    calls: list = []
    ops.draw_batch(CheckingLayout(calls), bpy.context)
    for index, item in enumerate(batch.items):
        ops.SAFEMOTION_UL_batch_items.draw_item(None, bpy.context, CheckingLayout(calls), batch, item, 0, batch,
                                                "active_item", index)
    assert {("operator", "safemotion.batch_generate"), ("progress", "4/4 applied"),
            ("list", "SAFEMOTION_UL_batch_items"), ("label", batch.items[0].name)} <= set(calls)


def test_resume_after_blender_and_server_restarts(ops, server, tmp_path):
    """Blender restarts (the file is saved and reopened): the known job is polled. Then the server restarts with an
    empty database (its jobs are lost): Resume submits the unfinished prompts again and skips the finished ones."""
    blend = tmp_path / "batch.blend"
    prompts = ["a person walks", "a person jumps", "a person waves", "a person sits", "a person turns"]
    runner = start(ops, "\n".join(prompts))
    step_until(runner, applied=1)
    first_job = runner.batch.items[0].job_id
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    del runner

    bpy.ops.wm.open_mainfile(filepath=str(blend))  # "Blender restarted": only the saved scene state is left
    batch = bpy.context.scene.safemotion_batch
    assert sorted(i.state for i in batch.items) == ["DONE"] + ["QUEUED"] * 4
    runner = ops.BatchRunner(bpy.context.scene, bpy.context)
    step_until(runner, applied=2)
    assert {i.job_id for i in batch.items} == {first_job}  # the server still knew the job: polled, not resubmitted
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    del runner

    data_dir = server.args.index("--data-dir") + 1
    server.stop()
    server.args[data_dir] = str(tmp_path / "fresh-data")  # same port, empty database: every job is lost
    server.start()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    batch = bpy.context.scene.safemotion_batch
    done_before = {i.name: i.action.name for i in batch.items if i.state == "DONE"}
    assert len(done_before) == 2
    assert bpy.ops.safemotion.batch_resume() == {"FINISHED"}

    assert [i.state for i in batch.items] == ["DONE"] * 5
    resubmitted = [i for i in batch.items if i.name not in done_before]
    assert len(resubmitted) == 3 and {i.job_id for i in resubmitted} != {first_job}
    assert all(i.job_id == first_job for i in batch.items if i.name in done_before)
    assert {i.name: i.action.name for i in batch.items if i.name in done_before} == done_before
    assert sorted(a.name for a in bpy.data.actions) == sorted(i.name for i in batch.items)  # no duplicates
    assert [s[0] for s in nla_actions(batch.smpl_armature)] == [i.name for i in batch.items]
