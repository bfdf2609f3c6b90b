"""Workbench pictures of the retarget acceptance rigs walking: one mid-stride frame per rig, for a human to look at.

The rigs and the walk are the acceptance test's (tests/test_retarget_acceptance.py: a Rigify-generated rig in FK and
in IK mode, keijiro's Base.fbx with `Neo_` names, a UE5-named A-pose rig, the SMPL armature; the Bandai walk, 5 s at
20 fps). Each rig gets the walk through `armature.retarget_onto` as the add-on does, and a stick body (one box per
mapped bone, from its head to the next mapped joint's head, rigidly skinned to it: Rigify's deform bones, never its
controls). The frame shown is the one where the source's ankles are farthest apart. Also printed per rig, measured on
the evaluated pose: the lowest foot joint above the floor the rig stands on at rest, at that frame and at its lowest
over the walk (each beside the source's, scaled by the hip-height ratio), and the largest stretch of a mapped limb
segment at that frame against its rest length (1.000 = no stretch).

    .venv/bin/python bench/render_rigs.py OUT_FOLDER [--shared /work/shared] [--size 480x360] [--rigs smpl ue5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import bpy  # noqa: E402

import test_retarget_acceptance as acceptance  # noqa: E402
from blender_addon import armature, demo_scene, retarget, smpl_math  # noqa: E402
from blender_addon.smpl_math import JOINT_NAMES  # noqa: E402

FOOT_ROLES = ("left_ankle", "right_ankle", "left_foot", "right_foot")
LIMBS = [(JOINT_NAMES[j], JOINT_NAMES[c]) for j, c in retarget.DIRECTION_CHILD.items() if c < 22]
BOX_WIDTH = 0.06
BODY_COLOR = (0.85, 0.55, 0.3, 1.0)


def stick_body(rig: bpy.types.Object, measured: dict[str, str]) -> bpy.types.Object:
    """One box per measured role from its bone's head to its child joint's bone head, skinned rigidly to that bone
    (BOX_WIDTH wide in world units, whatever the rig object's scale: an FBX import is often in centimetres)."""
    heads = {role: np.array(rig.data.bones[bone].head_local) for role, bone in measured.items()}
    width = BOX_WIDTH / float(np.array(rig.matrix_world.to_scale()).mean())
    vertices, faces, groups = [], [], {}
    for parent, child in LIMBS:
        if parent not in heads or child not in heads:
            continue
        box_vertices, box_faces = armature._box(heads[parent], heads[child], width)
        first = len(vertices)
        groups.setdefault(measured[parent], []).extend(range(first, first + len(box_vertices)))
        faces += [tuple(i + first for i in face) for face in box_faces]
        vertices += box_vertices
    mesh = bpy.data.meshes.new("stick body")
    mesh.from_pydata(vertices, [], faces)
    mesh.update()
    mesh.materials.append(demo_scene._material("stick body", BODY_COLOR))
    body = bpy.data.objects.new("stick body", mesh)
    bpy.context.scene.collection.objects.link(body)
    for bone, indices in groups.items():
        body.vertex_groups.new(name=bone).add(indices, 1.0, "REPLACE")
    body.modifiers.new("Armature", "ARMATURE").object = rig
    body.parent = rig
    return body


def world_points(obj: bpy.types.Object) -> np.ndarray:
    """The evaluated mesh's vertices [V, 3] in world space at the current frame."""
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        local = np.array([tuple(v.co) for v in mesh.vertices])
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    return local @ world[:3, :3].T + world[:3, 3]


def render_rig(kind: str, walk, shared: Path, out: Path, size: tuple[int, int]) -> dict[str, float]:
    """Retarget the walk onto one acceptance rig, render its mid-stride frame to out/KIND.png; the frame's numbers."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = acceptance.FPS, 1.0
    rig = acceptance.make_rig(kind, walk, shared)
    fit = armature.fit_target(rig, "AUTO")
    _, result = armature.retarget_onto(rig, walk.pose, walk.transl, walk.rest_joints, fit=fit, fps=acceptance.FPS)
    measured = dict(fit.mapping, **fit.reference)
    body = stick_body(rig, measured)

    source = smpl_math.forward_kinematics(walk.pose, walk.transl, walk.rest_joints)[0]
    frame = 1 + int(np.argmax(np.linalg.norm(source[:, 7, [0, 2]] - source[:, 8, [0, 2]], axis=1)))
    roles = [role for role in JOINT_NAMES[:22] if role in measured]
    rest = np.array([np.array(rig.matrix_world @ rig.data.bones[measured[r]].head_local) for r in roles])
    floor = float(min(rest[roles.index(r), 2] for r in FOOT_ROLES if r in roles))
    walked = acceptance.evaluated_heads(rig, [measured[r] for r in roles], np.arange(1, len(walk.pose) + 1))
    posed = walked[frame - 1]
    stretch = max(np.linalg.norm(posed[roles.index(c)] - posed[roles.index(p)])
                  / np.linalg.norm(rest[roles.index(c)] - rest[roles.index(p)])
                  for p, c in LIMBS if p in roles and c in roles)
    feet = [JOINT_NAMES.index(r) for r in FOOT_ROLES if r in roles]
    lowest = walked[:, [roles.index(JOINT_NAMES[j]) for j in feet], 2].min(axis=1) - floor  # [T]
    # The source's, from its rest floor (Y-up), scaled by the hip-height ratio like the travel.
    source_lowest = result.scale * (source[:, feet, 1].min(axis=1) - walk.rest_joints[feet, 1].min())

    around = [max(1, frame - 10), frame, min(len(walk.pose), frame + 10)]
    points = []
    for f in around:
        scene.frame_set(f)
        points.append(world_points(body))
    points = np.stack(points)
    footprint = points[..., :2].reshape(-1, 2)
    demo_scene.add_ground(scene, footprint.min(axis=0) - 3.0, footprint.max(axis=0) + 3.0, floor)
    demo_scene.add_camera(scene, points, around, size[0] / size[1])
    demo_scene.setup_workbench(scene, *size)
    scene.render.image_settings.compression = 100
    scene.frame_set(frame)
    scene.render.filepath = str(out / f"{kind}.png")
    bpy.ops.render.render(write_still=True)
    return {"frame": frame, "lowest_foot_above_floor_cm": 100 * float(lowest[frame - 1]),
            "source_cm": 100 * float(source_lowest[frame - 1]), "walk_min_cm": 100 * float(lowest.min()),
            "source_walk_min_cm": 100 * float(source_lowest.min()), "max_stretch": float(stretch),
            "kb": os.path.getsize(out / f"{kind}.png") / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the PNGs (made if missing)")
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("SAFEMOTION_SHARED", REPO_ROOT.parent /
                                                                          "shared")))
    parser.add_argument("--size", default="480x360", help="WIDTHxHEIGHT in pixels")
    parser.add_argument("--rigs", nargs="+", choices=acceptance.RIGS, default=list(acceptance.RIGS))
    args = parser.parse_args()
    size = tuple(int(n) for n in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        walk = acceptance.load_clips(args.shared, Path(folder))["walk"]
    for kind in args.rigs:
        numbers = render_rig(kind, walk, args.shared, args.out.resolve(), size)
        print(f"{kind}: frame {numbers['frame']}, lowest foot joint {numbers['lowest_foot_above_floor_cm']:+.1f} cm "
              f"above the floor (the source's, scaled: {numbers['source_cm']:+.1f} cm; lowest over the walk "
              f"{numbers['walk_min_cm']:+.1f} cm, the source's {numbers['source_walk_min_cm']:+.1f} cm), largest limb "
              f"stretch {numbers['max_stretch']:.3f}, "
              f"{args.out / (kind + '.png')} ({numbers['kb']:.0f} KB)", flush=True)


if __name__ == "__main__":
    main()
