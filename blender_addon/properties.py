"""What the add-on stores in each scene (`scene.safemotion`): the generation settings, the takes of the last
generation, the flagged generations of this file, and the state of a generation in flight.

Read and write these with attribute access only (Blender 5.0 refuses dict access on bpy.props properties).
"""

from __future__ import annotations

import bpy

from . import preferences, retarget

SECONDS_RANGE = (0.5, 9.8)  # the server's accepted durations (196 frames at 20 fps at most)
VARIATIONS_RANGE = (1, 16)
MAX_SEED = 2**31 - 1 - VARIATIONS_RANGE[1]  # seed + k of every variation must fit a (32-bit) Blender int

PRESET_LABELS = {"smpl": "SMPL", "mixamo": "Mixamo", "rigify": "Rigify (FK controls)",
                 "rigify_def": "Rigify (deform bones)", "ue5": "Unreal Engine 5"}


def preset_items() -> list[tuple[str, str, str]]:
    """AUTO plus one item per retarget preset (identifier = the preset's name)."""
    items = [("AUTO", "Auto-detect", "Pick the preset whose bone names match the target armature best")]
    for name in retarget.PRESETS:
        items.append((name, PRESET_LABELS.get(name, name), f"Map the target's bones by the {name} naming preset"))
    return items


POLICY_ITEMS = (
    ("SANITIZE", "Sanitize", "Flagged motions are returned with the removed (violent) codes replaced", 0),
    ("BLOCK", "Block", "Flagged motions are refused: nothing is written", 1),
)
ALLOW_ITEM = ("ALLOW", "Allow", "Flagged motions are returned as generated (recorded in the safety list); offered "
                                "only when the server grants it to your safety-admin key", 2)


def policy_items(_owner, context) -> tuple:
    """Sanitize and Block, and Allow where Check Connection found that the server grants it to the key."""
    return (*POLICY_ITEMS, ALLOW_ITEM) if context is not None and preferences.allow_granted(context) else POLICY_ITEMS


def is_armature(_owner: bpy.types.PropertyGroup, obj: bpy.types.Object) -> bool:
    """PointerProperty poll: only armatures may be picked."""
    return obj.type == "ARMATURE"


class SafeMotionSafety(bpy.types.PropertyGroup):
    """The server's safety record of one motion, as the panel shows it (`record_json` keeps it whole)."""

    screened: bpy.props.BoolProperty(name="Screened", description="The model has removed codes to look for")
    flagged: bpy.props.BoolProperty(name="Flagged")
    hit_ratio: bpy.props.FloatProperty(name="Hit Ratio", subtype="FACTOR", min=0.0, max=1.0,
                                       description="Share of the motion's tokens that use codes the model removed")
    threshold: bpy.props.FloatProperty(name="Threshold", subtype="FACTOR", min=0.0, max=1.0)
    calibrated: bpy.props.BoolProperty(name="Calibrated",
                                       description="The threshold was calibrated on held-out prompts")
    decision: bpy.props.StringProperty(name="Decision", description="pass, sanitized, blocked or allowed")
    concept: bpy.props.StringProperty(name="Concept")
    reason: bpy.props.StringProperty(name="Reason")
    signals: bpy.props.StringProperty(name="Signals",
                                      description="Every signal of the record: score, threshold and whether it fired")
    record_json: bpy.props.StringProperty(name="Safety Record", description="The server's safety record as JSON")


class SafeMotionTake(bpy.types.PropertyGroup):
    """One returned variation: its actions (SMPL armature and, when retargeted, the target) and its safety record."""

    # `name` (the take's label) comes with PropertyGroup
    prompt: bpy.props.StringProperty(name="Prompt")
    seed: bpy.props.IntProperty(name="Seed", description="Generating this seed as variation 0 reproduces the take")
    variation: bpy.props.IntProperty(name="Variation")
    frames: bpy.props.IntProperty(name="Frames")
    frame_start: bpy.props.IntProperty(name="Start Frame")
    armature: bpy.props.PointerProperty(name="SMPL Armature", type=bpy.types.Object)
    action_name: bpy.props.StringProperty(name="Action", description="Action on the SMPL armature")
    target: bpy.props.PointerProperty(name="Target", type=bpy.types.Object)
    target_action_name: bpy.props.StringProperty(name="Target Action", description="Retargeted action")
    foot_cleanup: bpy.props.BoolProperty(name="Feet Cleaned Up",
                                         description="The server pinned this take's planted feet and put it on the "
                                                     "floor")
    base_tokens: bpy.props.StringProperty(name="Base Codes",
                                          description="The base-layer code ids the server decoded this take from, "
                                                      "comma-separated; an edit sends them back so its safety review "
                                                      "counts the kept tokens' removed codes")
    seam_warnings: bpy.props.StringProperty(name="Seam Warnings",
                                            description="An edit's seams still over the server's seam limit after "
                                                        "re-sampling, one per line (take frames); empty when all hold")
    safety: bpy.props.PointerProperty(type=SafeMotionSafety)


class SafeMotionFlagged(bpy.types.PropertyGroup):
    """A safety decision in this file: a sanitized, blocked or allowed generation, or an audit (kept after its take
    is discarded, for the safety report)."""

    created: bpy.props.StringProperty(name="Time", description="When it was decided (UTC, ISO 8601)")
    event: bpy.props.StringProperty(name="Event", description="generation or audit")
    who: bpy.props.StringProperty(name="Who", description="The user of this computer who asked")
    server: bpy.props.StringProperty(name="Server", description="The server that decided")
    prompt: bpy.props.StringProperty(name="Prompt")
    model: bpy.props.StringProperty(name="Model")
    seed: bpy.props.IntProperty(name="Seed")
    policy: bpy.props.StringProperty(name="Policy", description="sanitize, block or allow (empty for audits)")
    action_name: bpy.props.StringProperty(name="Action")
    spans: bpy.props.StringProperty(name="Flagged Frames", description="Scene frame spans of the hit tokens")
    note: bpy.props.StringProperty(name="Note", description="How this audit compares with the take's generation")
    safety: bpy.props.PointerProperty(type=SafeMotionSafety)


class SafeMotionSettings(bpy.types.PropertyGroup):
    """Generation settings, takes, flagged list and in-flight state of a scene."""

    prompt: bpy.props.StringProperty(name="Prompt", description="What the person does, e.g. 'a person walks "
                                                                  "forward and waves'")
    seconds: bpy.props.FloatProperty(name="Seconds", default=4.0, min=SECONDS_RANGE[0], max=SECONDS_RANGE[1],
                                     step=10, precision=1, description="Duration of each take")
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0, max=MAX_SEED,
                                description="Variation k is generated from seed + k")
    random_seed: bpy.props.BoolProperty(name="Random Seed", default=True,
                                        description="Pick a new seed for every generation (stored in each take)")
    variations: bpy.props.IntProperty(name="Variations", default=1, min=VARIATIONS_RANGE[0],
                                      max=VARIATIONS_RANGE[1], description="How many takes to generate")
    skin_body: bpy.props.BoolProperty(name="Skin Body", default=False,
                                      description="Give each new SMPL armature the server's body mesh, skinned to "
                                                  "it. Needs a server started with --body-model (an SMPL model file "
                                                  "you own); the bundled server has none, so takes are bare bones")
    foot_cleanup: bpy.props.BoolProperty(name="Clean Up Feet", default=True,
                                         description="Pin planted feet (no sliding) and put the lowest contact on "
                                                     "the floor; off: the model's raw motion")
    start_at_playhead: bpy.props.BoolProperty(name="Start at Playhead", default=False,
                                              description="Start new takes at the current frame instead of the "
                                                          "scene's start frame")
    target_armature: bpy.props.PointerProperty(name="Target", type=bpy.types.Object, poll=is_armature,
                                               description="Armature to retarget the takes onto (optional)")
    bone_preset: bpy.props.EnumProperty(name="Bone Mapping", items=preset_items(),
                                        description="How the target's bones are matched to SMPL joints")
    policy: bpy.props.EnumProperty(name="Safety Policy", items=policy_items, default=0)
    takes: bpy.props.CollectionProperty(type=SafeMotionTake)
    active_take: bpy.props.IntProperty(name="Active Take", default=0)
    flagged: bpy.props.CollectionProperty(type=SafeMotionFlagged)
    active_flagged: bpy.props.IntProperty(name="Active Flagged Generation", default=0)
    last_safety: bpy.props.PointerProperty(type=SafeMotionSafety)
    job_id: bpy.props.StringProperty(name="Job", description="Server job of the generation in flight")
    progress: bpy.props.FloatProperty(name="Progress", subtype="FACTOR", min=0.0, max=1.0)
    status: bpy.props.StringProperty(name="Status")


CLASSES = (SafeMotionSafety, SafeMotionTake, SafeMotionFlagged, SafeMotionSettings)


def register() -> None:
    """Register the property groups and attach the settings to every scene as `scene.safemotion`."""
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.safemotion = bpy.props.PointerProperty(type=SafeMotionSettings)


def unregister() -> None:
    """Remove `scene.safemotion` and the property groups."""
    del bpy.types.Scene.safemotion
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
