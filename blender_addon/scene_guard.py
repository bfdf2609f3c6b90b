"""One guard for every operator that writes into the scene.

- `claim` / `release` / `writer_of` / `writers`: the one record of the long-running operations (a generation, a batch)
  writing into a scene; the operators find their own runs in it (there is no second "running" flag).
- `busy_reason(scene)`: why a scene-writing operator may not start now (a generation or a batch is writing into this
  scene), or None. Every such operator's poll asks it, so Generate, Generate Batch, Retarget, Audit, the take buttons
  and the mapping editor never interleave their writes.
- `Census`: what a file holds that an operator could add or change: the data-blocks (objects, armatures, actions,
  meshes, materials, collections, texts), the scene's markers, frame range and SafeMotion lists, each object's active
  action and NLA tracks, and the custom properties of objects (and their pose bones), armature data, actions and
  scenes. Two equal censuses mean the operator left the file as it was.
- `keep_file_on_failure()`: a context manager; when the block inside raises, everything it added is removed and what
  it changed is put back (to the census taken on entry), then the exception goes on. Operators check first and write
  last, so this is the net under checks that can only run while writing (e.g. the retarget maths refusing a rig).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import bpy

# bpy.data collections an operator of the add-on may add to; removal order (users before what they use).
ID_COLLECTIONS = ("objects", "meshes", "armatures", "actions", "materials", "collections", "texts")
# Scene settings an operator may change.
SCENE_SETTINGS = ("frame_start", "frame_end", "frame_current", "use_preview_range", "frame_preview_start",
                  "frame_preview_end")
# Data whose custom properties the census keeps and `restore` puts back.
PROPERTY_OWNERS = ("objects", "armatures", "actions", "scenes")
# SafeMotion collection properties of the scene (owner path, property): entries added inside are removed again.
SCENE_LISTS = (("safemotion", "takes"), ("safemotion", "flagged"), ("safemotion_batch", "items"))

# The long-running operations writing into a scene now (a generation, a batch): scene pointer -> (writer, what).
# The operators find their own runs here too (`writers`), so this is the one record of what is running.
_writers: dict[int, tuple[object, str]] = {}


def claim(scene: bpy.types.Scene, writer: object, what: str) -> None:
    """Record that `writer` (described as `what`, e.g. "A generation") writes into `scene` until `release`."""
    _writers[scene.as_pointer()] = (writer, what)


def release(writer: object) -> None:
    """Forget `writer` (finished, cancelled or dropped); its scene is free again."""
    for key in [key for key, (held, _) in _writers.items() if held is writer]:
        del _writers[key]


def writer_of(scene: bpy.types.Scene | None) -> object | None:
    """The operation writing into `scene` now, or None."""
    entry = _writers.get(scene.as_pointer()) if scene is not None else None
    return None if entry is None else entry[0]


def writers() -> list[object]:
    """Every operation writing into some scene now."""
    return [writer for writer, _ in _writers.values()]


def clear() -> None:
    """Forget every writer (add-on disabled)."""
    _writers.clear()


def busy_reason(scene: bpy.types.Scene | None) -> str | None:
    """Why a scene-writing operator may not start in `scene` now, or None when it may."""
    if scene is None:
        return "there is no scene"
    entry = _writers.get(scene.as_pointer())
    return None if entry is None else f"{entry[1]} is writing into this scene: wait for it or cancel it"


def poll_free(operator_class, context: bpy.types.Context) -> bool:
    """An operator's poll: True when no other SafeMotion operator is writing into the scene (else says why)."""
    reason = busy_reason(context.scene)
    if reason is not None:
        operator_class.poll_message_set(reason[0].upper() + reason[1:])
        return False
    return True


def _plain(value: object) -> object:
    """A custom property's value as plain Python (groups as dicts, arrays as lists), detached from Blender's storage."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "to_list"):
        return value.to_list()
    return value


def _custom_properties(owner: bpy.types.bpy_struct) -> dict[str, object]:
    """The custom properties of a data-block or pose bone, as plain values (properties that bpy.props declares are
    left out: Blender before 5.0 lists them among the keys)."""
    declared = type(owner).bl_rna.properties
    return {key: _plain(owner[key]) for key in owner.keys() if key not in declared}


def _property_owners() -> Iterator[tuple[str, bpy.types.bpy_struct]]:
    """("kind/name", owner) of everything whose custom properties the census keeps: objects (and the pose bones of
    armature objects: Rigify's IK/FK switches live there), armatures, actions, scenes."""
    for kind in PROPERTY_OWNERS:
        for block in getattr(bpy.data, kind):
            yield f"{kind}/{block.name}", block
            if kind == "objects" and block.pose is not None:
                for pose_bone in block.pose.bones:
                    yield f"objects/{block.name}/pose.bones/{pose_bone.name}", pose_bone


def _anim_state(obj: bpy.types.Object) -> tuple | None:
    anim = obj.animation_data
    if anim is None:
        return None
    tracks = tuple((t.name, tuple((s.name, s.action.name if s.action else None, s.frame_start, s.frame_end)
                                  for s in t.strips)) for t in anim.nla_tracks)
    return anim.action.name if anim.action else None, tracks


@dataclass
class Census:
    """Everything a SafeMotion operator may add to or change in a file (see the module's docstring)."""

    ids: dict[str, frozenset[int]] = field(default_factory=dict)  # collection -> pointers of its data-blocks
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # collection -> sorted names (for messages)
    markers: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)  # scene -> markers
    settings: dict[str, tuple] = field(default_factory=dict)  # scene -> SCENE_SETTINGS values
    lists: dict[str, tuple[int, ...]] = field(default_factory=dict)  # scene -> lengths of SCENE_LISTS
    animation: dict[str, tuple | None] = field(default_factory=dict)  # object -> active action, NLA tracks
    properties: dict[str, dict[str, object]] = field(default_factory=dict)  # "kind/name[...]" -> custom properties

    @classmethod
    def take(cls) -> Census:
        """The census of the file as it is now."""
        census = cls()
        for attr in ID_COLLECTIONS:
            blocks = list(getattr(bpy.data, attr))
            census.ids[attr] = frozenset(b.as_pointer() for b in blocks)
            census.names[attr] = tuple(sorted(b.name for b in blocks))
        for scene in bpy.data.scenes:
            census.markers[scene.name] = tuple(sorted((m.name, m.frame) for m in scene.timeline_markers))
            census.settings[scene.name] = tuple(getattr(scene, s) for s in SCENE_SETTINGS)
            census.lists[scene.name] = tuple(_list_length(scene, owner, prop) for owner, prop in SCENE_LISTS)
        for obj in bpy.data.objects:
            census.animation[obj.name] = _anim_state(obj)
        for key, owner in _property_owners():
            census.properties[key] = _custom_properties(owner)
        return census

    def comparable(self) -> dict:
        """The census without data-block pointers (for equality in tests and readable differences)."""
        return {"names": self.names, "markers": self.markers, "settings": self.settings, "lists": self.lists,
                "animation": self.animation, "properties": self.properties}

    def differences(self, other: Census) -> list[str]:
        """What differs between this census and `other`, in words (empty when the file is unchanged)."""
        found = []
        mine, theirs = self.comparable(), other.comparable()
        for part, values in mine.items():
            for key in sorted(set(values) | set(theirs[part])):
                if values.get(key) != theirs[part].get(key):
                    found.append(f"{part}[{key}]: {values.get(key)!r} -> {theirs[part].get(key)!r}")
        return found


def _list_length(scene: bpy.types.Scene, owner: str, prop: str) -> int:
    group = getattr(scene, owner, None)
    return len(getattr(group, prop)) if group is not None else 0


def restore(census: Census) -> None:
    """Remove what was added since `census` and put back the scene settings, lists, animation and custom properties
    (added ones removed, changed or removed ones set to their earlier values)."""
    for attr in ID_COLLECTIONS:
        collection = getattr(bpy.data, attr)
        for block in [b for b in collection if b.as_pointer() not in census.ids[attr]]:
            collection.remove(block)
    for scene in bpy.data.scenes:
        if scene.name not in census.markers:
            continue
        kept = list(census.markers[scene.name])
        for marker in list(scene.timeline_markers):
            entry = (marker.name, marker.frame)
            if entry in kept:
                kept.remove(entry)
            else:
                scene.timeline_markers.remove(marker)
        for name, frame in kept:  # markers removed inside come back
            scene.timeline_markers.new(name, frame=frame)
        for setting, value in zip(SCENE_SETTINGS, census.settings[scene.name]):
            if getattr(scene, setting) != value:
                setattr(scene, setting, value)
        for (owner, prop), length in zip(SCENE_LISTS, census.lists[scene.name]):
            group = getattr(scene, owner, None)
            if group is None:
                continue
            entries = getattr(group, prop)
            while len(entries) > length:
                entries.remove(len(entries) - 1)
    for obj in bpy.data.objects:
        if obj.name in census.animation:
            _restore_animation(obj, census.animation[obj.name])
    for key, owner in _property_owners():
        before = census.properties.get(key)
        if before is None:
            continue
        now = _custom_properties(owner)
        for name in now.keys() - before.keys():
            del owner[name]
        for name, value in before.items():
            if name not in now or now[name] != value:
                owner[name] = value


def _restore_animation(obj: bpy.types.Object, state: tuple | None) -> None:
    """Put back an object's active action and drop NLA tracks added since (tracks are only ever added)."""
    if state is None:
        if obj.animation_data is not None:
            obj.animation_data_clear()
        return
    action_name, tracks = state
    anim = obj.animation_data
    if anim is None:
        anim = obj.animation_data_create()
    names = [name for name, _ in tracks]
    for track in list(anim.nla_tracks):
        if track.name not in names:
            anim.nla_tracks.remove(track)
    action = bpy.data.actions.get(action_name) if action_name else None
    if anim.action != action:
        anim.action = action


@contextmanager
def keep_file_on_failure() -> Iterator[Census]:
    """Run the block; if it raises, undo what it added or changed (see `restore`) and re-raise."""
    census = Census.take()
    try:
        yield census
    except BaseException:
        restore(census)
        raise
