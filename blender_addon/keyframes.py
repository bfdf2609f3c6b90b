"""Fast, version-proof keyframe writing: one place that knows how F-curves are reached in Blender 4.2 to 5.0.

- 4.2/4.3: legacy `action.fcurves` with action groups;
- 4.4/4.5: slotted actions, F-curves live in a channelbag (layer -> keyframe strip -> channelbag of the object's slot);
- 5.0: `action.fcurves` is gone; `Action.fcurve_ensure_for_datablock` creates the slot, layer, strip, channelbag and
  F-curve in one call, in a group. (4.5 has that call too, but without `group_name`: it takes the 4.4/4.5 route.)

`AnimData.action_slot` is never assigned from Python (it crashes 4.5/5.0): assigning the action picks the slot, and
`last_slot_identifier` steers that choice. Keys are written in bulk with `keyframe_points.add` + `foreach_set`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import bpy
import numpy as np

OBJECT_GROUP = "Object Transforms"  # Blender's own group name for object-level channels
_BONE_PATH = re.compile(r'^pose\.bones\["((?:[^"\\]|\\.)*)"\][.\[]')  # a property or a custom property
_LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
_ENSURE_FOR_DATABLOCK = bpy.types.Action.bl_rna.functions.get("fcurve_ensure_for_datablock")
_ENSURE_TAKES_GROUP = _ENSURE_FOR_DATABLOCK is not None and "group_name" in _ENSURE_FOR_DATABLOCK.parameters  # 5.0


def channel_group(data_path: str) -> str:
    """Group for an F-curve: the bone name for `pose.bones["Name"].…` and `…["prop"]` paths, else the object group."""
    match = _BONE_PATH.match(data_path)
    return match.group(1).replace('\\"', '"') if match else OBJECT_GROUP


def assign_action(obj: bpy.types.Object, action: bpy.types.Action) -> None:
    """Make `action` the object's active action (the slot is chosen by Blender, never assigned here)."""
    anim = obj.animation_data or obj.animation_data_create()
    if anim.action != action:
        anim.action = action


def _object_slot(action: bpy.types.Action, obj: bpy.types.Object):
    """The action slot animating `obj` (4.4+), created and selected through `last_slot_identifier` when missing."""
    anim = obj.animation_data
    if anim.action_slot is not None:
        return anim.action_slot
    slot = next((s for s in action.slots if s.identifier == "OB" + obj.name), None)
    if slot is None:
        slot = action.slots.new(id_type="OBJECT", name=obj.name)
    anim.action = None
    anim.last_slot_identifier = slot.identifier
    anim.action = action
    if anim.action_slot is None:
        raise RuntimeError(f"action {action.name!r}: Blender did not select slot {slot.identifier!r} for {obj.name!r}")
    return anim.action_slot


def _read_slot(action: bpy.types.Action, obj: bpy.types.Object):
    """The slot of `action` that animates `obj`, without assigning anything: the object's own slot when the action is
    its active one, else the slot made for it (identifier "OB" + its name), else the action's only object slot."""
    anim = obj.animation_data
    if anim is not None and anim.action == action:
        return anim.action_slot
    objects = [s for s in action.slots if s.identifier.startswith("OB")]
    return next((s for s in objects if s.identifier == "OB" + obj.name), objects[0] if len(objects) == 1 else None)


def _channelbag(action: bpy.types.Action, obj: bpy.types.Object, create: bool):
    """The channelbag holding `obj`'s F-curves in a slotted action (None when absent and not `create`)."""
    slot = _object_slot(action, obj) if create else _read_slot(action, obj)
    if slot is None:
        return None
    for layer in action.layers:
        for strip in layer.strips:
            channelbag = strip.channelbag(slot)
            if channelbag is not None:
                return channelbag
    if not create:
        return None
    layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
    return strip.channelbag(slot, ensure=True)


def _ensure_fcurve_in_channelbag(
    action: bpy.types.Action, obj: bpy.types.Object, data_path: str, index: int, group: str
) -> bpy.types.FCurve:
    """4.4/4.5 path: F-curve in the object's channelbag, put in `group` (4.5's `fcurves.new` takes no group)."""
    channelbag = _channelbag(action, obj, create=True)
    fcurve = channelbag.fcurves.find(data_path, index=index)
    if fcurve is None:
        fcurve = channelbag.fcurves.new(data_path, index=index)
        fcurve.group = next((g for g in channelbag.groups if g.name == group), None) or channelbag.groups.new(group)
    return fcurve


def ensure_fcurve(
    action: bpy.types.Action, obj: bpy.types.Object, data_path: str, index: int, group: str
) -> bpy.types.FCurve:
    """The F-curve of `action` for (data_path, index) on `obj`, created in `group` if missing, on Blender 4.2-5.0."""
    assign_action(obj, action)
    if _ENSURE_TAKES_GROUP:  # 5.0
        return action.fcurve_ensure_for_datablock(obj, data_path, index=index, group_name=group)
    if hasattr(action, "layers"):  # 4.4/4.5 slotted actions
        return _ensure_fcurve_in_channelbag(action, obj, data_path, index, group)
    fcurve = action.fcurves.find(data_path, index=index)  # 4.2/4.3
    return fcurve if fcurve is not None else action.fcurves.new(data_path, index=index, action_group=group)


def find_fcurve(action: bpy.types.Action, obj: bpy.types.Object, data_path: str, index: int) -> bpy.types.FCurve | None:
    """The existing F-curve of `action` for (data_path, index) on `obj`, or None; `action` need not be the object's
    active action (several takes share one SMPL armature), and nothing is assigned."""
    if hasattr(action, "layers"):
        channelbag = _channelbag(action, obj, create=False)
        return None if channelbag is None else channelbag.fcurves.find(data_path, index=index)
    return action.fcurves.find(data_path, index=index)


def write_keys(
    obj: bpy.types.Object,
    action: bpy.types.Action,
    channels: Mapping[tuple[str, int], np.ndarray],
    frames: np.ndarray,
) -> None:
    """Key every channel (data_path, index) -> values [T] at `frames` [T] with linear interpolation.

    The action becomes the object's active action; each channel's previous keys are replaced.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 1 or frames.size == 0 or not np.all(np.diff(frames) > 0):
        raise ValueError(f"write_keys: frames must be a non-empty, strictly increasing 1-D array, got {frames!r}")
    coords = np.empty(2 * frames.size, dtype=np.float32)
    coords[0::2] = frames
    interpolation = np.full(frames.size, _LINEAR, dtype=np.int32)
    for (data_path, index), values in channels.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != frames.shape:
            raise ValueError(
                f"write_keys: channel {data_path}[{index}] has {values.shape} values, "
                f"expected {frames.shape} (one per frame)"
            )
        fcurve = ensure_fcurve(action, obj, data_path, index, channel_group(data_path))
        points = fcurve.keyframe_points
        points.clear()
        points.add(frames.size)
        coords[1::2] = values
        points.foreach_set("co", coords)
        points.foreach_set("interpolation", interpolation)
        fcurve.update()


def read_keys(
    action: bpy.types.Action, obj: bpy.types.Object, data_path: str, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frames [K] and values [K] of one channel's keys (float32, as Blender stores them)."""
    fcurve = find_fcurve(action, obj, data_path, index)
    if fcurve is None:
        raise KeyError(f"action {action.name!r} has no F-curve {data_path}[{index}] for object {obj.name!r}")
    coords = np.empty(2 * len(fcurve.keyframe_points), dtype=np.float32)
    fcurve.keyframe_points.foreach_get("co", coords)
    return coords[0::2].copy(), coords[1::2].copy()
