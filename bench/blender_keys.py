"""Keying an SMPL take in Blender: the add-on's bulk key writer vs `keyframe_insert` per bone per frame.

Both key 24 bones × 4 quaternion channels plus the pelvis location for every frame of a 196-frame take on the bone-only
SMPL armature, each repeat into a fresh action. Timed: `keyframes.write_keys` alone (channels prepared), the whole
`armature.apply_smpl_motion` (axis-angle -> quaternions, action, keys), and the `keyframe_insert` loop.

    .venv/bin/python bench/blender_keys.py                  # prints a Markdown section, appends it to bench/RESULTS.md
    .venv/bin/python bench/blender_keys.py --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import bpy  # noqa: E402

from blender_addon import armature, keyframes, smpl_math  # noqa: E402
from results_md import publish

SECTION = "## Blender keying (issue 7)"


def rest_skeleton() -> np.ndarray:
    """A T-pose-like rest [24,3] (Y-up); the geometry does not affect keying cost."""
    offsets = np.array(
        [[0, 0.9, 0], [0.08, -0.08, 0], [-0.08, -0.08, 0], [0, 0.12, 0], [0, -0.4, 0], [0, -0.4, 0], [0, 0.14, 0],
         [0, -0.42, 0], [0, -0.42, 0], [0, 0.06, 0], [0, -0.05, 0.12], [0, -0.05, 0.12], [0, 0.2, 0], [0.07, 0.1, 0],
         [-0.07, 0.1, 0], [0, 0.1, 0.04], [0.11, 0, 0], [-0.11, 0, 0], [0.26, 0, 0], [-0.26, 0, 0], [0.25, 0, 0],
         [-0.25, 0, 0], [0.085, 0, 0], [-0.085, 0, 0]]
    )
    joints = np.zeros((24, 3))
    for j in range(24):
        joints[j] = offsets[j] + (joints[smpl_math.PARENTS[j]] if j else 0.0)
    return joints


def fresh_scene(fps: int) -> bpy.types.Object:
    """Empty scene at `fps` with one SMPL armature."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = fps
    bpy.context.scene.render.fps_base = 1.0
    return armature.build_smpl_armature("SMPL", smpl_math.JOINT_NAMES, smpl_math.PARENTS, rest_skeleton())


def drop_animation(obj: bpy.types.Object) -> None:
    """Remove the object's action so the next repeat starts from nothing."""
    action = obj.animation_data.action if obj.animation_data else None
    obj.animation_data_clear()
    if action is not None:
        bpy.data.actions.remove(action)


def time_write_keys(obj, pose, transl, repeats: int) -> list[float]:
    """Seconds per repeat of keyframes.write_keys with the channels already prepared."""
    quats = smpl_math.quat_continuous(smpl_math.axis_angle_to_quat(pose))
    channels = {
        (f'pose.bones["{name}"].rotation_quaternion', i): quats[:, j, i]
        for j, name in enumerate(smpl_math.JOINT_NAMES)
        for i in range(4)
    }
    channels.update({('pose.bones["pelvis"].location', i): transl[:, i] for i in range(3)})
    frames = np.arange(1.0, len(pose) + 1.0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        keyframes.write_keys(obj, bpy.data.actions.new("bench"), channels, frames)
        times.append(time.perf_counter() - start)
        drop_animation(obj)
    return times


def time_apply(obj, pose, transl, fps: int, repeats: int) -> list[float]:
    """Seconds per repeat of armature.apply_smpl_motion (conversion + action + keys)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        armature.apply_smpl_motion(obj, pose, transl, fps=fps)
        times.append(time.perf_counter() - start)
        drop_animation(obj)
    return times


def time_keyframe_insert(obj, pose, transl, repeats: int) -> list[float]:
    """Seconds per repeat of setting each pose bone and calling keyframe_insert per bone per frame."""
    quats = smpl_math.quat_continuous(smpl_math.axis_angle_to_quat(pose))
    bones = [obj.pose.bones[name] for name in smpl_math.JOINT_NAMES]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for t in range(len(pose)):
            frame = t + 1
            for j, bone in enumerate(bones):
                bone.rotation_quaternion = quats[t, j]
                bone.keyframe_insert("rotation_quaternion", frame=frame, group=bone.name)
            bones[0].location = transl[t]
            bones[0].keyframe_insert("location", frame=frame, group=bones[0].name)
        times.append(time.perf_counter() - start)
        if _ < repeats - 1:
            drop_animation(obj)
    return times


def stats(times: list[float]) -> tuple[float, float]:
    """Median and 90th percentile in milliseconds."""
    ms = np.array(times) * 1e3
    return float(np.median(ms)), float(np.percentile(ms, 90))


def same_keys(obj, pose) -> bool:
    """The keyframe_insert action holds the same key values as write_keys would (checked on one channel)."""
    quats = smpl_math.quat_continuous(smpl_math.axis_angle_to_quat(pose))
    _, values = keyframes.read_keys(obj.animation_data.action, obj, 'pose.bones["left_elbow"].rotation_quaternion', 1)
    return bool(np.allclose(values, quats[:, 18, 1], atol=1e-6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=196)
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15, help="repeats of the bulk writer")
    parser.add_argument("--insert-repeats", type=int, default=5, help="repeats of the keyframe_insert loop")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pose = rng.normal(scale=0.4, size=(args.frames, 24, 3))
    transl = np.cumsum(rng.normal(scale=0.01, size=(args.frames, 3)), axis=0)
    obj = fresh_scene(args.fps)
    time_write_keys(obj, pose, transl, 2)  # warm-up
    write_ms = stats(time_write_keys(obj, pose, transl, args.repeats))
    apply_ms = stats(time_apply(obj, pose, transl, args.fps, args.repeats))
    insert_ms = stats(time_keyframe_insert(obj, pose, transl, args.insert_repeats))
    consistent = same_keys(obj, pose)

    keys = args.frames * (24 * 4 + 3)
    text = "\n".join(
        [
            SECTION,
            "",
            f"`bench/blender_keys.py`: {args.frames} frames × 24 bones (4 quaternion channels each) + pelvis "
            f"location = {keys} keys in 99 F-curves on the bone-only SMPL armature, each repeat into a fresh action. "
            f"bpy {bpy.app.version_string}, Python {platform.python_version()}, {platform.machine()}, "
            f"{os.cpu_count()} CPU cores shared with other jobs (contended machine, so absolute times are noisy).",
            "",
            "| method | repeats | median ms | p90 ms |",
            "|---|---|---|---|",
            f"| `keyframes.write_keys` (keys only) | {args.repeats} | {write_ms[0]:.1f} | {write_ms[1]:.1f} |",
            f"| `armature.apply_smpl_motion` (axis-angle → keys) | {args.repeats} | {apply_ms[0]:.1f} "
            f"| {apply_ms[1]:.1f} |",
            f"| `keyframe_insert` per bone per frame | {args.insert_repeats} | {insert_ms[0]:.1f} "
            f"| {insert_ms[1]:.1f} |",
            "",
            f"Speed-up (median): write_keys {insert_ms[0] / write_ms[0]:.0f}×, apply_smpl_motion "
            f"{insert_ms[0] / apply_ms[0]:.0f}× faster than keyframe_insert. Target: ≤ 100 ms and ≥ 20×. "
            f"Same key values from both methods: {'yes' if consistent else 'NO'}.",
        ]
    )
    publish(SECTION, text, args.results, write=not args.no_write)


if __name__ == "__main__":
    main()
