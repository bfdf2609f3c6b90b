"""`make demo` end to end with the tiny random LCR model: the bundled server, Blender (bpy) with the add-on enabled as
an extension, the retarget onto the demo rig, the saved .blend, the Workbench frames, the GIF and the report; a
failing run leaves the previous output alone and no server behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
server_support = pytest.importorskip("server_support")  # the backend (torch, safemotion) and the tiny model

from PIL import Image  # noqa: E402

from safemotion import demo  # noqa: E402

OPTIONS = dict(seed=3, seconds=2.0, every=8, width=320, height=180)
FRAMES = 40  # 2 s at 20 fps


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain `text` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if any(text.encode() in arg for arg in args):
            found.append(b" ".join(args).decode(errors="replace"))
    return found


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return server_support.build_tiny_lcr_model(tmp_path_factory.mktemp("demo_model") / "tiny-lcr")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_model):
    """One demo run into <tmp>/out/demo: (output folder, returned report)."""
    out = tmp_path_factory.mktemp("demo_out") / "demo"
    report = demo.run_demo(out, demo.DemoOptions(model=tiny_model, **OPTIONS))
    return out, report


def test_demo_writes_exactly_its_outputs_in_place_and_stops_the_server(demo_run, tiny_model):
    out, report = demo_run
    assert sorted(p.name for p in out.iterdir()) == ["demo.blend", "frames", "preview.gif", "report.json"]
    assert [p.name for p in out.parent.iterdir()] == ["demo"]  # no scratch folder left beside it
    assert json.loads((out / "report.json").read_text()) == report
    assert _processes_mentioning(str(tiny_model)) == []  # the bundled server (started with --model) is gone


def test_report_describes_the_generation_and_a_faithful_retarget(demo_run, tiny_model):
    _, report = demo_run
    assert (report["prompt"], report["seed"], report["fps"], report["frames"]) == (demo.PROMPT, 3, 20, FRAMES)
    model = report["model"]
    assert (model["name"], model["path"], model["device"]) == ("tiny-lcr", str(tiny_model), "cpu")
    assert model["unlearning"]["method"] == "lcr" and model["unlearning"]["concept"] == "violence"
    safety = report["safety"]
    assert safety["decision"] in ("pass", "sanitized") and safety["record"]["decision"] == safety["decision"]
    assert safety["flagged"] == (safety["record"]["hit_ratio"] >= safety["record"]["threshold"])
    assert safety["record"]["num_tokens"] == FRAMES // 4
    assert report["rig"]["preset"] == "mixamo" and report["rig"]["mapped_bones"] == report["rig"]["bones"] == 22
    errors = report["bone_direction_error_deg"]
    assert errors["pairs"] == len(errors["per_pair_max"]) == 17  # every mapped SMPL bone with a mapped child joint
    assert 0.0 <= errors["mean"] <= errors["p95"] <= errors["max"] < 0.05
    assert report["render"]["engine"] == "BLENDER_WORKBENCH"
    assert report["gif"] == {"file": "preview.gif", "frames": math.ceil(FRAMES / 8), "frame_ms": 400}


def test_frames_and_gif_are_the_rendered_preview(demo_run):
    out, report = demo_run
    pngs = sorted((out / "frames").iterdir())
    assert [p.name for p in pngs] == [f"frame_{f:04d}.png" for f in range(1, FRAMES + 1, 8)]
    assert report["render"]["frames"] == [p.name for p in pngs]
    pixels = []
    for png in pngs:
        with Image.open(png) as image:
            assert (image.format, image.size) == ("PNG", (320, 180))
            pixels.append(np.asarray(image.convert("RGB"), dtype=np.float64))
    body = np.array([0.85, 0.42, 0.15]) * 255  # the body's orange (roughly; shading changes it)
    for frame in pixels:
        orange = (frame[..., 0] > frame[..., 2] + 60) & (np.abs(frame - body).sum(axis=-1) < 200)
        assert orange.mean() > 0.005, "the figure is not in the picture"
    assert np.abs(pixels[0] - pixels[-1]).mean() > 1.0  # the figure moved
    with Image.open(out / "preview.gif") as gif:
        assert (gif.format, gif.size, gif.n_frames) == ("GIF", (320, 180), len(pngs))
        assert gif.info["duration"] == 400 and gif.info["loop"] == 0


def test_blend_opens_with_the_retargeted_action_on_the_skinned_rig(demo_run):
    out, report = demo_run
    bpy.ops.wm.open_mainfile(filepath=str(out / "demo.blend"), load_ui=False)
    try:
        scene = bpy.context.scene
        rig = bpy.data.objects[report["rig"]["name"]]
        smpl = bpy.data.objects[report["smpl_armature"]["name"]]
        assert rig.animation_data.action.name == report["rig"]["action"]
        assert tuple(rig.animation_data.action.frame_range) == (1.0, float(FRAMES))
        (body,) = [child for child in rig.children if child.type == "MESH"]
        assert body.modifiers["Armature"].object == rig
        assert sorted(g.name for g in body.vertex_groups) == sorted(b.name for b in rig.data.bones)
        assert scene.camera is not None and scene.render.engine == "BLENDER_WORKBENCH"
        assert (scene.frame_start, scene.frame_end, scene.frame_step) == (1, FRAMES, 8)

        # In the reopened file, the rig's bones still point where the generated SMPL joints do.
        pairs = [pair.split("->") for pair in report["bone_direction_error_deg"]["per_pair_max"]]
        mixamo = {"pelvis": "Hips", "spine1": "Spine", "spine2": "Spine1", "spine3": "Spine2", "neck": "Neck",
                  "head": "Head", "hip": "UpLeg", "knee": "Leg", "ankle": "Foot", "foot": "ToeBase",
                  "collar": "Shoulder", "shoulder": "Arm", "elbow": "ForeArm", "wrist": "Hand"}

        def rig_bone(joint: str) -> str:
            side, _, role = joint.partition("_")
            return "mixamorig:" + (side.capitalize() + mixamo[role] if role else mixamo[joint])

        rest_heads = [tuple(rig.pose.bones[rig_bone(a)].head) for a, _ in pairs]
        scene.frame_set(FRAMES // 2)
        for a, b in pairs:
            source = smpl.pose.bones[b].head - smpl.pose.bones[a].head
            target = rig.pose.bones[rig_bone(b)].head - rig.pose.bones[rig_bone(a)].head
            assert math.degrees(source.angle(target)) < 0.05, (a, b)
        moved = [tuple(rig.pose.bones[rig_bone(a)].head) for a, _ in pairs]
        assert np.abs(np.array(moved) - np.array(rest_heads)).max() > 0.01
    finally:
        bpy.ops.wm.read_homefile(use_empty=True)


def test_a_failing_run_keeps_the_previous_output_and_stops_the_server(demo_run, tiny_model, tmp_path):
    out, report = demo_run
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for source in tiny_model.iterdir():
        (broken / source.name).write_bytes(source.read_bytes())
    (broken / "vq.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match="Blender process failed") as failure:
        demo.run_demo(out, demo.DemoOptions(model=broken, **OPTIONS))
    assert "server" in str(failure.value)
    assert json.loads((out / "report.json").read_text()) == report
    assert [p.name for p in out.parent.iterdir()] == ["demo"]
    assert _processes_mentioning(str(broken)) == []


def test_a_missing_model_fails_before_anything_starts(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --model"):
        demo.run_demo(tmp_path / "demo", demo.DemoOptions(model=tmp_path / "nowhere", **OPTIONS))
    assert list(tmp_path.iterdir()) == []
