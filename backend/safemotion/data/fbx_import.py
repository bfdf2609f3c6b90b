"""FBX animation clips read through Blender's FBX importer (the `bpy` module): world joint positions per frame.

Importing resets bpy's scene before and after, so this must not run inside an interactive Blender session.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Blender's world is Z-up; SafeMotion's is Y-up: (x, y, z) -> (x, z, -y).
_BLENDER_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _import_bpy():
    try:
        import bpy
    except ImportError as err:
        raise ImportError(
            "reading FBX files needs Blender's Python module: `pip install bpy` (matching Python version), "
            "or convert the clip to BVH"
        ) from err
    if not bpy.app.background:
        raise RuntimeError("load_fbx_joints resets the Blender scene; run it from the bpy module, not the Blender UI")
    return bpy


def load_fbx_joints(path: str | os.PathLike, fps: float | None = None) -> tuple[np.ndarray, list[str], float]:
    """World positions [T, J, 3] (metres, Y-up) of the bones of the FBX's largest armature, bone names, scene fps.

    With `fps` the animation is sampled by time at that rate (Blender interpolates its curves between keys);
    otherwise one sample per scene frame over the action's frame range.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such FBX file")
    bpy = _import_bpy()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    try:
        try:
            bpy.ops.import_scene.fbx(filepath=str(path))
        except RuntimeError as err:
            raise ValueError(f"{path}: Blender's FBX importer failed: {err}") from None
        armatures = [ob for ob in bpy.data.objects if ob.type == "ARMATURE"]
        if not armatures:
            raise ValueError(f"{path}: the FBX file contains no armature (skeleton)")
        armature = max(armatures, key=lambda ob: len(ob.pose.bones))
        scene = bpy.context.scene
        scene_fps = scene.render.fps / scene.render.fps_base
        action = armature.animation_data.action if armature.animation_data else None
        first, last = action.frame_range if action else (scene.frame_current, scene.frame_current)
        if fps is None:
            frames = np.arange(round(first), round(last) + 1, dtype=np.float64)
        else:
            frames = first + np.arange(int(np.floor((last - first) / scene_fps * fps + 1e-6)) + 1) * scene_fps / fps

        bones = armature.pose.bones
        heads = np.empty(len(bones) * 3, dtype=np.float32)  # armature space, filled by foreach_get
        positions = np.empty((len(frames), len(bones), 3))
        for k, frame in enumerate(frames):
            whole = int(np.floor(frame + 1e-6))
            scene.frame_set(whole, subframe=max(float(frame - whole), 0.0))
            bones.foreach_get("head", heads)
            world = np.array(armature.matrix_world, dtype=np.float64)  # the armature object may be animated too
            positions[k] = heads.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
        names = [bone.name for bone in bones]
    finally:
        bpy.ops.wm.read_factory_settings(use_empty=True)
    return positions @ _BLENDER_TO_Y_UP.T, names, float(scene_fps)
