"""The Blender side of `make demo`: generate a prompt onto a skinned Mixamo-named rig, measure it, stage it, render it.

`run_demo` uses the add-on as a user would: the bundled server (preferences: Bundled Local Server, the backend's
Python, a model folder), the scene's prompt settings with the demo rig as the retarget target, and the Generate
operator (synchronous in background mode). The server is stopped as soon as the take is written, also on error.
Then the scene gets a checkered ground, a camera that keeps the whole motion in view, a sun (for EEVEE/Cycles; the
Workbench preview ignores lights) and Workbench render settings; the file is saved and every `every`-th frame
rendered to PNG.

The retarget is checked against the generated motion: for every SMPL joint pair (joint -> the joint that sets its
bone direction) that maps onto two rig bones, the angle between the generated pair (the SMPL armature's joints) and
the rig's pair (the mapped bones' heads), per frame, as Blender evaluates both armatures.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from . import armature, backend_process, keyframes, preferences, properties, retarget, smpl_math

RIG_NAME = "SafeMotion demo"
FRAMES_FOLDER = "frames"
FRAME_PREFIX = "frame_"
BLEND_FILE = "demo.blend"
SCENE_FPS = 20  # the motions' own rate: one key per scene frame
TILE_M = 0.5  # ground checker tile
GROUND_MARGIN_M = 6.0  # ground beyond the motion's footprint
CAMERA_SMOOTHING = SCENE_FPS  # frames of the moving average the camera follows
FRAME_MARGIN = 1.25  # the camera keeps the motion this much smaller than the picture
VIEW_FROM = (0.9, 0.55, 0.32)  # camera direction: (across the travel, ahead of the figure, up), normalised
BODY_COLOR = (0.85, 0.42, 0.15, 1.0)
TILE_COLORS = ((0.62, 0.64, 0.66, 1.0), (0.46, 0.48, 0.5, 1.0))
SKY_COLOR = (0.78, 0.84, 0.9)


@dataclass(frozen=True)
class DemoRequest:
    """What to generate and how to render it."""

    prompt: str
    seed: int
    seconds: float
    python: str  # interpreter of the environment with the backend (starts the bundled server)
    out_dir: str  # demo.blend and frames/ are written here
    model: str | None = None  # model folder for the bundled server; None = the server's default model
    width: int = 640
    height: int = 360
    every: int = 4  # render every n-th frame

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("DemoRequest.prompt: the prompt is empty; pass a sentence such as 'a person walks'")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"DemoRequest: picture size {self.width}x{self.height} is too small (16x16 at least)")
        if self.every < 1:
            raise ValueError(f"DemoRequest.every: {self.every}; render every n-th frame with n >= 1")
        if not properties.SECONDS_RANGE[0] <= self.seconds <= properties.SECONDS_RANGE[1]:
            raise ValueError(f"DemoRequest.seconds: {self.seconds:g}; the server generates "
                             f"{properties.SECONDS_RANGE[0]:g}-{properties.SECONDS_RANGE[1]:g} s")


def run_demo(request: DemoRequest) -> dict:
    """Generate, retarget, measure, stage, save demo.blend and render frames/; returns what happened (JSON-ready)."""
    out_dir = Path(request.out_dir)
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = SCENE_FPS, 1.0
    rig = armature.build_armature(RIG_NAME, armature.demo_rig_bones())
    body = add_body(rig)

    started = time.monotonic()
    try:
        take, server = _generate(bpy.context, request, rig)
    finally:
        backend_process.stop_server()
    generated = time.monotonic()

    smpl_rig = take.armature
    first, last = (round(f) for f in rig.animation_data.action.frame_range)
    frames = list(range(first, last + 1))
    mapping = armature.fit_target(rig, scene.safemotion.bone_preset).mapping
    errors, body_points, pelvis = _measure(scene, smpl_rig, rig, body, mapping, frames)

    _stage(scene, body, body_points, frames, request)
    scene.frame_start, scene.frame_end, scene.frame_step = frames[0], frames[-1], request.every
    scene.frame_set(frames[0])
    scene.render.filepath = f"//{FRAMES_FOLDER}/{FRAME_PREFIX}"  # next to the .blend, wherever it is moved
    bpy.ops.wm.save_as_mainfile(filepath=str(out_dir / BLEND_FILE))
    rendered = render_frames(scene)
    finished = time.monotonic()

    pair_names = [f"{a}->{b}" for a, b in _direction_pairs(mapping)]
    record = json.loads(take.safety.record_json) if take.safety.screened else None
    return {
        "prompt": take.prompt,
        "seed": take.seed,
        "fps": SCENE_FPS,
        "frames": take.frames,
        "seconds": len(frames) / SCENE_FPS,
        "model": server,
        "safety": {"decision": take.safety.decision, "flagged": take.safety.flagged, "record": record},
        "rig": {"name": rig.name, "bones": len(rig.data.bones), "preset": retarget.detect_preset(rig.data.bones.keys()),
                "mapped_bones": len(mapping), "action": rig.animation_data.action.name},
        "smpl_armature": {"name": smpl_rig.name, "action": smpl_rig.animation_data.action.name},
        "bone_direction_error_deg": {
            "pairs": len(pair_names),
            "mean": float(errors.mean()),
            "p95": float(np.percentile(errors, 95)),
            "max": float(errors.max()),
            "per_pair_max": {name: float(v) for name, v in zip(pair_names, errors.max(axis=0))},
        },
        "travel_m": float(np.linalg.norm(pelvis[-1, :2] - pelvis[0, :2])),
        "render": {"engine": scene.render.engine, "width": request.width, "height": request.height,
                   "every": request.every, "frames": [p.name for p in rendered]},
        "blender": bpy.app.version_string,
        "timings_s": {"server_start_and_generate": generated - started,
                      "measure_stage_render": finished - generated},
    }


def _generate(context: bpy.types.Context, request: DemoRequest,
              rig: bpy.types.Object) -> tuple[bpy.types.PropertyGroup, dict]:
    """One take from the bundled server, retargeted onto `rig`, and the served model's description."""
    prefs = preferences.addon_preferences(context)
    prefs.backend_mode = "BUNDLED"
    prefs.python_path = request.python
    prefs.model_path = request.model or ""
    settings = context.scene.safemotion
    settings.prompt, settings.seconds, settings.seed = request.prompt, request.seconds, request.seed
    settings.random_seed, settings.variations, settings.policy = False, 1, "SANITIZE"
    settings.target_armature, settings.bone_preset = rig, "AUTO"
    try:
        result = bpy.ops.safemotion.generate()
    except RuntimeError as err:  # the operator's error report
        raise RuntimeError(f"Generate failed: {settings.status or err}") from None
    if result != {"FINISHED"} or len(settings.takes) != 1:
        raise RuntimeError(f"Generate wrote nothing: {settings.status}")
    client = preferences.client_from_preferences(context)
    health, info = client.health(), client.models()["models"][0]
    server = {"name": health["model"], "device": health["device"],
              "backend_version": health["version"], "text_encoder": info["text_encoder"],
              "unlearning": info["unlearning"], "safety_threshold": info["safety_threshold"],
              "safety_calibrated": info["safety_calibrated"]}
    return settings.takes[0], server


def _direction_pairs(mapping: dict[str, str]) -> list[tuple[str, str]]:
    """SMPL (joint, direction child) pairs whose both joints are mapped to rig bones."""
    names = smpl_math.JOINT_NAMES
    return [(names[j], names[c]) for j, c in retarget.DIRECTION_CHILD.items()
            if names[j] in mapping and names[c] in mapping]


def _measure(scene: bpy.types.Scene, smpl_rig: bpy.types.Object, rig: bpy.types.Object, body: bpy.types.Object,
             mapping: dict[str, str], frames: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: bone-direction errors [T, pairs] (degrees), skinned body vertices [T, V, 3], rig hips [T, 3]."""
    pairs = _direction_pairs(mapping)
    if not pairs:
        raise RuntimeError(f"no SMPL joint pair maps onto {rig.name!r}; nothing to compare")
    errors, points, pelvis = [], [], []
    for frame in frames:
        scene.frame_set(frame)
        source = _heads(smpl_rig, [p for pair in pairs for p in pair])
        target = _heads(rig, [mapping[p] for pair in pairs for p in pair])
        errors.append(_angles(source[1::2] - source[0::2], target[1::2] - target[0::2]))
        evaluated = body.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = evaluated.to_mesh()
        coords = np.empty(3 * len(mesh.vertices))
        mesh.vertices.foreach_get("co", coords)
        evaluated.to_mesh_clear()
        world = np.array(evaluated.matrix_world)
        points.append(coords.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3])
        pelvis.append(_heads(rig, [mapping["pelvis"]])[0])
    return np.array(errors), np.array(points), np.array(pelvis)


def _heads(obj: bpy.types.Object, bones: list[str]) -> np.ndarray:
    """World positions [N, 3] of posed bone heads."""
    world = obj.matrix_world
    return np.array([tuple(world @ obj.pose.bones[name].head) for name in bones])


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles in degrees between matching rows of a and b [N, 3]."""
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


# ---------------------------------------------------------------------------------------------- the body

# Body shape per demo-rig bone (Mixamo name without prefix): radius at the bone's head and tail (m), depth over width
# of the cross-section, and how far the rounded ends reach past the head and the tail (m), covering bent joints.
BODY_SHAPE: dict[str, tuple[float, float, float, float, float]] = {
    "Hips": (0.13, 0.125, 0.7, 0.05, 0.03), "Spine": (0.125, 0.12, 0.68, 0.02, 0.02),
    "Spine1": (0.12, 0.13, 0.68, 0.02, 0.02), "Spine2": (0.135, 0.15, 0.66, 0.02, 0.05),
    "Neck": (0.045, 0.045, 1.0, 0.02, 0.02), "Head": (0.07, 0.08, 1.15, 0.03, 0.06),
    "Shoulder": (0.05, 0.05, 1.0, 0.03, 0.03), "Arm": (0.048, 0.04, 1.0, 0.04, 0.03),
    "ForeArm": (0.038, 0.03, 1.0, 0.03, 0.02), "Hand": (0.04, 0.035, 0.45, 0.01, 0.03),
    "UpLeg": (0.075, 0.052, 1.0, 0.06, 0.04), "Leg": (0.05, 0.038, 1.0, 0.04, 0.03),
    "Foot": (0.04, 0.038, 0.75, 0.03, 0.02), "ToeBase": (0.038, 0.03, 0.6, 0.01, 0.02),
}
RING_SIDES = 12
_CAP_ANGLES = np.radians([40.0, 75.0])  # rings of each rounded end, from the tip towards the bone


def add_body(rig: bpy.types.Object) -> bpy.types.Object:
    """A rounded body (one tapered capsule per bone, rigidly skinned to it) for the demo rig."""
    vertices, faces, smooth = [], [], []
    groups: dict[str, range] = {}
    for bone in rig.data.bones:
        role = bone.name.split(":")[-1].removeprefix("Left").removeprefix("Right")
        if role not in BODY_SHAPE:
            raise ValueError(f"add_body: no body shape for bone {bone.name!r}; add {role!r} to BODY_SHAPE")
        rings = _capsule(np.array(bone.head_local), np.array(bone.tail_local), *BODY_SHAPE[role])
        first = len(vertices)
        vertices += [tuple(p) for ring in rings for p in ring]
        groups[bone.name] = range(first, len(vertices))
        ring_index = [[first + r * RING_SIDES + k for k in range(RING_SIDES)] for r in range(len(rings))]
        for lower, upper in zip(ring_index, ring_index[1:]):
            for k in range(RING_SIDES):
                k1 = (k + 1) % RING_SIDES
                faces.append((lower[k], lower[k1], upper[k1], upper[k]))  # counter-clockwise about the bone: outward
                smooth.append(True)
        faces += [tuple(reversed(ring_index[0])), tuple(ring_index[-1])]
        smooth += [False, False]
    mesh = bpy.data.meshes.new(rig.name + " body")
    mesh.from_pydata(vertices, [], faces)
    mesh.polygons.foreach_set("use_smooth", smooth)
    mesh.update()
    body = bpy.data.objects.new(rig.name + " body", mesh)
    bpy.context.scene.collection.objects.link(body)
    for bone, indices in groups.items():
        body.vertex_groups.new(name=bone).add(list(indices), 1.0, "REPLACE")
    body.modifiers.new("Armature", "ARMATURE").object = rig
    body.parent = rig
    return body


def _capsule(head: np.ndarray, tail: np.ndarray, start: float, end: float, flat: float, before: float,
             after: float) -> list[np.ndarray]:
    """Rings [RING_SIDES, 3] of a tapered capsule around head -> tail: rounded ends, elliptical cross-sections."""
    length = float(np.linalg.norm(tail - head))
    axis = (tail - head) / length
    # Width runs along world X (left-right) for the torso, legs and feet, along world Y for the arms (palms flat).
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.7 else np.array([0.0, 1.0, 0.0])
    across = helper - (helper @ axis) * axis
    across /= np.linalg.norm(across)
    depth = np.cross(axis, across)
    angles = 2 * np.pi * np.arange(RING_SIDES) / RING_SIDES
    profile = [(-before * np.cos(a), start * np.sin(a)) for a in _CAP_ANGLES] + [(0.0, start), (length, end)]
    profile += [(length + after * np.cos(a), end * np.sin(a)) for a in _CAP_ANGLES[::-1]]
    return [head + along * axis + radius * (np.cos(angles)[:, None] * across + flat * np.sin(angles)[:, None] * depth)
            for along, radius in profile]


# ---------------------------------------------------------------------------------------------- stage and render

def _stage(scene: bpy.types.Scene, body: bpy.types.Object, body_points: np.ndarray, frames: list[int],
           request: DemoRequest) -> None:
    """Materials, ground, camera, sun, world colour and Workbench settings around the motion."""
    body.data.materials.append(_material("SafeMotion body", BODY_COLOR))
    rest_floor = min((body.matrix_world @ v.co).z for v in body.data.vertices)
    footprint = body_points[..., :2].reshape(-1, 2)
    add_ground(scene, footprint.min(axis=0) - GROUND_MARGIN_M, footprint.max(axis=0) + GROUND_MARGIN_M, rest_floor)
    add_camera(scene, body_points, frames, request.width / request.height)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (0.7, 0.2, 0.6)
    scene.collection.objects.link(sun)
    scene.world = bpy.data.worlds.new("SafeMotion sky")
    scene.world.color = SKY_COLOR
    setup_workbench(scene, request.width, request.height)


def _material(name: str, color: tuple[float, float, float, float]) -> bpy.types.Material:
    """A material whose viewport colour (what Workbench shows) is `color`."""
    material = bpy.data.materials.new(name)
    material.diffuse_color = color
    return material


def add_ground(scene: bpy.types.Scene, low: np.ndarray, high: np.ndarray, height: float) -> bpy.types.Object:
    """A checkered ground (TILE_M squares, two materials) covering the rectangle low..high (x, y) at `height`."""
    first = np.floor(np.asarray(low) / TILE_M).astype(int)
    last = np.ceil(np.asarray(high) / TILE_M).astype(int)
    nx, ny = last - first
    xs = (first[0] + np.arange(nx + 1)) * TILE_M
    ys = (first[1] + np.arange(ny + 1)) * TILE_M
    vertices = [(float(x), float(y), height) for y in ys for x in xs]
    faces = [(j * (nx + 1) + i, j * (nx + 1) + i + 1, (j + 1) * (nx + 1) + i + 1, (j + 1) * (nx + 1) + i)
             for j in range(ny) for i in range(nx)]
    mesh = bpy.data.meshes.new("Ground")
    mesh.from_pydata(vertices, [], faces)
    for k, color in enumerate(TILE_COLORS):
        mesh.materials.append(_material(f"Ground tile {k}", color))
    parity = [(first[0] + i + first[1] + j) % 2 for j in range(ny) for i in range(nx)]
    mesh.polygons.foreach_set("material_index", parity)
    mesh.update()
    ground = bpy.data.objects.new("Ground", mesh)
    scene.collection.objects.link(ground)
    return ground


def add_camera(scene: bpy.types.Scene, body: np.ndarray, frames: list[int], aspect: float) -> bpy.types.Object:
    """A 50 mm camera following the body's smoothed centre from beside and ahead of its travel (location keyed per
    frame), at one distance that keeps the whole body [T, V, 3] in view on every frame."""
    data = bpy.data.cameras.new("Camera")
    data.lens, data.sensor_fit = 50.0, "HORIZONTAL"
    track = _smooth((body.min(axis=1) + body.max(axis=1)) / 2, CAMERA_SMOOTHING)
    track[:, 2] = (body[..., 2].min() + body[..., 2].max()) / 2  # no bobbing up and down
    forward = np.array([*(track[-1, :2] - track[0, :2]), 0.0])
    forward = forward / np.linalg.norm(forward) if np.linalg.norm(forward) > 0.2 else np.array([0.0, -1.0, 0.0])
    across = np.cross(forward, [0.0, 0.0, 1.0])
    back = VIEW_FROM[0] * across + VIEW_FROM[1] * forward + np.array([0.0, 0.0, VIEW_FROM[2]])
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    local = body - track[:, None]
    half_x = np.tan(data.angle_x / 2) / FRAME_MARGIN
    half_y = half_x / aspect
    # The camera sits at track + distance * back; a point at depth (distance - p·back) is in view when its
    # sideways offsets fit the half-angles there.
    distance = float(np.max(local @ back + np.maximum(np.abs(local @ right) / half_x, np.abs(local @ up) / half_y)))
    camera = bpy.data.objects.new("Camera", data)
    camera.matrix_world = Matrix(np.column_stack([right, up, back]).tolist()).to_4x4()
    location = track + distance * back
    action = bpy.data.actions.new("Camera follow")
    keyframes.write_keys(camera, action, {("location", i): location[:, i] for i in range(3)}, np.array(frames))
    data.clip_end = max(100.0, 3 * distance)
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Moving average of x [T, K] over `window` frames (edges repeated), same length."""
    width = max(1, min(window, len(x)))
    padded = np.pad(x, ((width // 2, width - 1 - width // 2), (0, 0)), mode="edge")
    kernel = np.full(width, 1.0 / width)
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(x.shape[1])], axis=1)


def setup_workbench(scene: bpy.types.Scene, width: int, height: int) -> None:
    """Workbench, studio light, material colours, shadows; PNG frames of width x height."""
    scene.render.engine = "BLENDER_WORKBENCH"
    shading = scene.display.shading
    shading.light, shading.color_type = "STUDIO", "MATERIAL"
    shading.show_shadows, shading.show_cavity = True, False
    scene.display.render_aa = "8"
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.film_transparent = False
    render.image_settings.file_format, render.image_settings.color_mode = "PNG", "RGB"


def render_frames(scene: bpy.types.Scene) -> list[Path]:
    """Render the scene's frame range (with its frame step) as PNGs at its output path; the files, in order."""
    scene.render.use_file_extension = True
    bpy.ops.render.render(animation=True)
    expected = [Path(scene.render.frame_path(frame=f))
                for f in range(scene.frame_start, scene.frame_end + 1, scene.frame_step)]
    missing = [p.name for p in expected if not p.is_file()]
    if missing:
        raise RuntimeError(f"rendering to {scene.render.filepath} left out frames {missing}")
    return expected
