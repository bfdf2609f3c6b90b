"""FBX clips through Blender's importer (bpy), in the same process as torch like the rest of the test run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch  # noqa: F401  (the backend loads torch and bpy together; importing both here checks they coexist)

from safemotion.data.fbx_import import load_fbx_joints
from safemotion.data.joint_maps import detect_preset
from safemotion.data.mocap_import import load_motion

bpy = pytest.importorskip("bpy")


@pytest.fixture
def turning_fbx(tmp_path):
    """A two-bone armature at Blender (2, 0, 0) whose hips turn 90 degrees about the vertical over frames 1-31."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = 30
    armature = bpy.data.armatures.new("Rig")
    rig = bpy.data.objects.new("Rig", armature)
    scene.collection.objects.link(rig)
    rig.location = (2.0, 0.0, 0.0)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    hips = armature.edit_bones.new("Neo_Hips")
    hips.head, hips.tail = (0.0, 0.0, 1.0), (0.0, 0.0, 1.2)
    leg = armature.edit_bones.new("Neo_LeftUpLeg")
    leg.head, leg.tail, leg.parent = (0.1, 0.0, 1.0), (0.1, 0.0, 0.55), hips
    bpy.ops.object.mode_set(mode="OBJECT")
    pose = rig.pose.bones["Neo_Hips"]
    pose.rotation_mode = "XYZ"
    for frame, degrees in ((1, 0.0), (31, 90.0)):
        pose.rotation_euler = (0.0, math.radians(degrees), 0.0)  # the bone's y axis is Blender's up (z)
        pose.keyframe_insert("rotation_euler", frame=frame)
    path = tmp_path / "turning.fbx"
    bpy.ops.export_scene.fbx(filepath=str(path), add_leaf_bones=False, bake_anim=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return path


def test_synthetic_fbx_positions_in_y_up_metres(turning_fbx):
    positions, names, fps = load_fbx_joints(turning_fbx)
    assert names == ["Neo_Hips", "Neo_LeftUpLeg"] and fps == 30 and positions.shape == (31, 2, 3)
    # Blender (x, y, z) -> (x, z, -y): hips (2, 0, 1) -> (2, 1, 0); the leg head turns from +x to Blender +y (-z).
    assert np.allclose(positions[0], [[2.0, 1.0, 0.0], [2.1, 1.0, 0.0]], atol=1e-5)
    assert np.allclose(positions[-1], [[2.0, 1.0, 0.0], [2.0, 1.0, -0.1]], atol=1e-5)
    resampled, _, _ = load_fbx_joints(turning_fbx, fps=20)
    assert resampled.shape == (21, 2, 3)
    assert np.abs(resampled[::2] - positions[::3]).max() < 1e-6  # shared time grid: t = 0, 0.1, ... s


def test_non_fbx_file_is_reported(tmp_path):
    path = tmp_path / "broken.fbx"
    path.write_text("not an fbx")
    with pytest.raises(ValueError, match="broken.fbx: Blender's FBX importer failed"):
        load_fbx_joints(path)


def test_keijiro_karate_clip(shared_dir):
    path = shared_dir / "data/cmu/keijiro_fbx/135_01.fbx"
    if not path.is_file():
        pytest.skip("keijiro FBX clips not staged")
    positions, names, fps = load_fbx_joints(path)
    assert fps == 30 and positions.shape == (1517, 22, 3)  # README: about 50.5 s of keys at 30 fps
    assert all(name.startswith("Neo_") for name in names) and detect_preset(names) == "mixamo"
    clip = load_motion(path)
    assert clip.source_fps == 30 and clip.joints.shape == (1011, 22, 3)  # floor(1516 / 30 * 20) + 1
    standing = clip.joints[0]
    assert 1.4 < standing[:, 1].max() - standing[:, 1].min() < 1.9  # cm in the file, metres here
    assert abs(clip.joints[..., 1].min()) < 0.05  # feet on the FBX floor
