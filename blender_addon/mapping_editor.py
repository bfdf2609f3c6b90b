"""The bone-mapping editor (sidebar ▸ SafeMotion ▸ Bone Mapping): which bone of a rig each SMPL joint drives.

One row per SMPL-22 joint (and the optional ground `root`) with a search field over the rig's bones; Fill from a preset
or the auto-mapper (`retarget.fill_mapping`); the problems (bones that are not in the rig, bones used twice, joints left
unmapped: `retarget.mapping_problems`, `retarget.missing_roles`) are listed live; Use Mapping stores the mapping with
the rig (custom property `safemotion_bone_mapping` on its armature data, as JSON role -> bone), where Generate, Batch,
Retarget and Audit find it again (`rig_fit`): with the panel's mapping on Auto-detect, a rig's stored mapping wins
over name detection. Mappings are saved and loaded as JSON presets in the user's folder
(the extension's user folder, `bone_mappings/`; Blender's user scripts presets folder when not installed as an
extension), written with `retarget.save_mapping`.

When Generate meets a rig it cannot map, it keeps the SMPL takes and opens this editor on that rig (`request_mapping`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import bpy
from bpy.props import CollectionProperty, EnumProperty, PointerProperty, StringProperty

from . import armature, retarget, scene_guard
from .preferences import ADDON_PACKAGE
from .properties import is_armature, preset_items

MAPPING_PROPERTY = "safemotion_bone_mapping"  # on the armature data: the rig's mapping as JSON role -> bone
EDITOR_ROLES: tuple[str, ...] = retarget.BODY_ROLES + (retarget.ROOT,)  # the joints HumanML3D models move + root
PRESETS_FOLDER = "bone_mappings"
PRESET_SUFFIX = ".json"
_PRESET_NAME = re.compile(r"^[\w][\w .()+-]{0,62}$")


# --- the mapping of a rig -----------------------------------------------------------------------------------------


def stored_mapping(obj: bpy.types.Object) -> dict[str, str] | None:
    """The mapping stored with the rig, or None; ValueError when it no longer fits the rig's bones."""
    text = obj.data.get(MAPPING_PROPERTY) if obj is not None and obj.type == "ARMATURE" else None
    if text is None:
        return None
    try:
        mapping = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise ValueError(f"the bone mapping stored with {obj.name!r} is not valid JSON: map its bones again in the "
                         "Bone Mapping editor") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"the bone mapping stored with {obj.name!r} is not a joint -> bone table: map its bones "
                         "again in the Bone Mapping editor")
    errors = retarget.mapping_problems(mapping, [bone.name for bone in obj.data.bones])
    if errors:
        raise ValueError(f"the bone mapping stored with {obj.name!r} no longer fits its bones ({'; '.join(errors)}): "
                         "fix it in the Bone Mapping editor")
    return mapping


def store_mapping(obj: bpy.types.Object, mapping: dict[str, str]) -> None:
    """Store a mapping with the rig (after checking it: ValueError naming every problem, nothing stored)."""
    errors = retarget.mapping_problems(mapping, [bone.name for bone in obj.data.bones])
    if errors:
        raise ValueError(f"bone mapping of {obj.name!r}: " + "; ".join(errors))
    obj.data[MAPPING_PROPERTY] = json.dumps({role: mapping[role] for role in retarget.ROLES if role in mapping})


def rig_fit(obj: bpy.types.Object, preset: str) -> retarget.RigFit:
    """The checked mapping to drive `obj` with (`armature.check_target`): its stored mapping when `preset` is AUTO and
    it has one, else the preset or the auto-detected preset (ValueError when the rig cannot be mapped)."""
    try:
        mapping = stored_mapping(obj) if preset == "AUTO" else None
        return armature.fit_target(obj, preset) if mapping is None else armature.check_target(obj, mapping)
    except ValueError as err:
        raise ValueError(f"{err} (open SafeMotion ▸ Bone Mapping to map the bones of {obj.name!r})") from None


# --- presets on disk ------------------------------------------------------------------------------------------------


def presets_folder(create: bool = False) -> Path:
    """The user's folder of mapping presets: in the extension's user folder, else Blender's user presets."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, path=PRESETS_FOLDER, create=create))
    except ValueError:  # not installed as an extension (bl_ext.*)
        return Path(bpy.utils.user_resource("SCRIPTS", path=f"presets/safemotion/{PRESETS_FOLDER}", create=create))


def preset_path(name: str) -> Path:
    """The file of preset `name`; ValueError for names that are not plain file names."""
    name = name.strip()
    if not _PRESET_NAME.match(name) or name.startswith("."):
        raise ValueError(f"preset name {name!r}: use 1-63 letters, digits, spaces or . _ - + ( ) (no slashes)")
    return presets_folder(create=True) / (name + PRESET_SUFFIX)


def preset_names() -> list[str]:
    """Names of the saved presets, sorted."""
    folder = presets_folder()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(PRESET_SUFFIX)] for p in folder.iterdir() if p.name.endswith(PRESET_SUFFIX))


_preset_items_cache: list[tuple[str, str, str]] = []  # Blender needs the enum strings kept alive


def _preset_file_items(_self, _context) -> list[tuple[str, str, str]]:
    _preset_items_cache[:] = [(n, n, f"Load the mapping preset {n!r}") for n in preset_names()] or [
        ("NONE", "No Presets", "Save a mapping as a preset first")]
    return _preset_items_cache


# --- the editor's data --------------------------------------------------------------------------------------------


class SafeMotionBoneSlot(bpy.types.PropertyGroup):
    """One editor row: the SMPL joint (`name`) and the rig bone chosen for it (empty: not mapped)."""

    bone: StringProperty(name="Bone", description="The rig's bone this SMPL joint drives")


def _load_rig(editor: SafeMotionMappingEditor, _context) -> None:
    """Rig changed: fill the rows from its stored mapping, else from the auto-mapper (what it recognises)."""
    rig = editor.rig
    mapping: dict[str, str] = {}
    if rig is not None:
        try:
            mapping = stored_mapping(rig) or retarget.fill_mapping("AUTO", [b.name for b in rig.data.bones])
        except ValueError:
            mapping = {}
    fill_slots(editor, mapping)


class SafeMotionMappingEditor(bpy.types.PropertyGroup):
    """The bone-mapping editor of a scene: the rig being mapped and one slot per SMPL joint."""

    rig: PointerProperty(name="Rig", type=bpy.types.Object, poll=is_armature, update=_load_rig,
                         description="Armature whose bones are mapped to SMPL joints")
    slots: CollectionProperty(type=SafeMotionBoneSlot)
    preset_name: StringProperty(name="Preset Name", description="File name of the preset to save")
    preset_file: EnumProperty(name="Preset", items=_preset_file_items, description="Saved mapping presets")
    needed: StringProperty(name="Why", description="Why a mapping is needed (set when Generate could not map a rig)")


def editor_mapping(editor: SafeMotionMappingEditor) -> dict[str, str]:
    """The mapping the editor's rows describe (rows without a bone left out)."""
    return {slot.name: slot.bone for slot in editor.slots if slot.bone}


def fill_slots(editor: SafeMotionMappingEditor, mapping: dict[str, str]) -> None:
    """One row per editor role, with the bone `mapping` gives it (roles outside the editor are dropped)."""
    editor.slots.clear()
    for role in EDITOR_ROLES:
        slot = editor.slots.add()
        slot.name = role
        slot.bone = mapping.get(role, "")


def request_mapping(context: bpy.types.Context, rig: bpy.types.Object, why: str) -> None:
    """Point the editor at a rig that could not be mapped and say why; in the UI, pop the editor up."""
    editor = context.scene.safemotion_mapping
    editor.rig = rig
    editor.needed = why
    if not bpy.app.background:
        try:
            bpy.ops.wm.call_panel(name=SAFEMOTION_PT_bone_mapping.bl_idname, keep_open=True)
        except RuntimeError:  # no window to pop up in (e.g. run from a script): the sidebar shows it
            pass


# --- operators ------------------------------------------------------------------------------------------------------


class _EditorOperator:
    """An operator on the scene's mapping editor; needs a rig."""

    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if context.scene is None or context.scene.safemotion_mapping.rig is None:
            cls.poll_message_set("Choose the rig to map first")
            return False
        return scene_guard.poll_free(cls, context)


class SAFEMOTION_OT_mapping_fill(_EditorOperator, bpy.types.Operator):
    """Fill the rows from a naming preset or the auto-mapper (rows the preset does not know are cleared)"""

    bl_idname = "safemotion.mapping_fill"
    bl_label = "Fill From Preset"

    source: EnumProperty(name="From", items=preset_items())

    def execute(self, context):
        editor = context.scene.safemotion_mapping
        mapping = retarget.fill_mapping(self.source, [bone.name for bone in editor.rig.data.bones])
        if not mapping:
            known = ("no retarget preset matches and the name matcher knows none" if self.source == "AUTO"
                     else f"none has a {self.source} name")
            self.report({"ERROR"}, f"of the bones of {editor.rig.name!r}, {known}: choose each joint's bone in the "
                                   "rows below")
            return {"CANCELLED"}
        fill_slots(editor, mapping)
        self.report({"INFO"}, f"{len(mapping)} joints mapped from {self.source}")
        return {"FINISHED"}


class SAFEMOTION_OT_mapping_use(_EditorOperator, bpy.types.Operator):
    """Check the rows and store the mapping with the rig: Generate, Batch, Retarget and Audit use it from now on"""

    bl_idname = "safemotion.mapping_use"
    bl_label = "Use Mapping"

    def execute(self, context):
        editor = context.scene.safemotion_mapping
        mapping = editor_mapping(editor)
        try:
            store_mapping(editor.rig, mapping)
        except ValueError as err:
            self.report({"ERROR"}, f"{err}; nothing was stored")
            return {"CANCELLED"}
        missing = retarget.missing_roles(mapping)
        editor.needed = ""
        note = f" ({len(missing)} joints unmapped: {', '.join(missing)}; they stay at rest)" if missing else ""
        self.report({"WARNING"} if missing else {"INFO"},
                    f"Stored a mapping of {len(mapping)} joints with {editor.rig.name!r}{note}")
        return {"FINISHED"}


class SAFEMOTION_OT_mapping_save_preset(_EditorOperator, bpy.types.Operator):
    """Save the rows as a JSON mapping preset in your user folder (reusable on rigs with the same bone names)"""

    bl_idname = "safemotion.mapping_save_preset"
    bl_label = "Save Preset"
    bl_options = {"REGISTER"}

    name: StringProperty(name="Name", description="Preset name (empty: the editor's preset name)")

    def execute(self, context):
        editor = context.scene.safemotion_mapping
        mapping = editor_mapping(editor)
        try:
            path = preset_path(self.name or editor.preset_name)
            if not mapping:
                raise ValueError("the rows are empty: map some joints first")
            retarget.save_mapping(path, mapping)
            path.chmod(0o644)
        except (ValueError, OSError) as err:
            self.report({"ERROR"}, f"Preset not saved: {err}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Saved the mapping preset {path.stem!r} ({len(mapping)} joints) to {path}")
        return {"FINISHED"}


class SAFEMOTION_OT_mapping_load_preset(_EditorOperator, bpy.types.Operator):
    """Load a saved mapping preset into the rows (refused when it names bones this rig does not have)"""

    bl_idname = "safemotion.mapping_load_preset"
    bl_label = "Load Preset"

    name: StringProperty(name="Name", description="Preset name (empty: the preset chosen in the editor)")

    def execute(self, context):
        editor = context.scene.safemotion_mapping
        name = self.name or editor.preset_file
        try:
            path = preset_path(name)
            if not path.is_file():
                raise ValueError(f"there is no preset {name!r} in {path.parent}")
            mapping = retarget.load_mapping(path)
            errors = retarget.mapping_problems(mapping, [bone.name for bone in editor.rig.data.bones])
            if errors:
                raise ValueError(f"it does not fit {editor.rig.name!r}: " + "; ".join(errors))
        except (ValueError, OSError) as err:
            self.report({"ERROR"}, f"Preset {name!r} not loaded: {err}")
            return {"CANCELLED"}
        fill_slots(editor, mapping)
        self.report({"INFO"}, f"Loaded the mapping preset {name!r} ({len(mapping)} joints)")
        return {"FINISHED"}


class SAFEMOTION_OT_mapping_edit(bpy.types.Operator):
    """Open the bone-mapping editor on the panel's target (or the active armature)"""

    bl_idname = "safemotion.mapping_edit"
    bl_label = "Edit Bone Mapping"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if _rig_to_edit(context) is None:
            cls.poll_message_set("Set a target armature or make an armature active")
            return False
        return True

    def execute(self, context):
        rig = _rig_to_edit(context)
        request_mapping(context, rig, "")
        return {"FINISHED"}


def _rig_to_edit(context) -> bpy.types.Object | None:
    if context.scene is None:
        return None
    target = context.scene.safemotion.target_armature
    if target is not None:
        return target
    obj = context.active_object
    return obj if obj is not None and obj.type == "ARMATURE" else None


# --- drawing --------------------------------------------------------------------------------------------------------


def draw_mapping_editor(layout, context) -> None:
    """The editor: rig, fill/presets, problems, one search field per joint, Use Mapping."""
    editor = context.scene.safemotion_mapping
    if editor.needed:
        box = layout.box()
        box.alert = True
        box.label(text="Map this rig's bones, then Retarget Take:", icon="ERROR")
        box.label(text=editor.needed)
    layout.prop(editor, "rig")
    rig = editor.rig
    if rig is None:
        return
    row = layout.row(align=True)
    row.operator_menu_enum(SAFEMOTION_OT_mapping_fill.bl_idname, "source", icon="AUTO")
    row = layout.row(align=True)
    row.prop(editor, "preset_file", text="")
    row.operator(SAFEMOTION_OT_mapping_load_preset.bl_idname, text="", icon="IMPORT")
    row = layout.row(align=True)
    row.prop(editor, "preset_name", text="")
    row.operator(SAFEMOTION_OT_mapping_save_preset.bl_idname, text="", icon="EXPORT")
    mapping = editor_mapping(editor)
    for error in retarget.mapping_problems(mapping, [bone.name for bone in rig.data.bones]):
        layout.label(text=error, icon="ERROR")
    missing = retarget.missing_roles(mapping)
    if missing:
        layout.label(text=f"Unmapped (stay at rest): {', '.join(missing)}", icon="INFO")
    column = layout.column(align=True)
    for slot in editor.slots:
        column.prop_search(slot, "bone", rig.data, "bones", text=slot.name)
    layout.operator(SAFEMOTION_OT_mapping_use.bl_idname, icon="CHECKMARK")


class SAFEMOTION_PT_bone_mapping(bpy.types.Panel):
    """Which bone of the rig each SMPL joint drives"""

    bl_idname = "SAFEMOTION_PT_bone_mapping"
    bl_label = "Bone Mapping"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SafeMotion"
    bl_parent_id = "SAFEMOTION_PT_generate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        draw_mapping_editor(self.layout, context)


CLASSES = (SafeMotionBoneSlot, SafeMotionMappingEditor, SAFEMOTION_OT_mapping_fill, SAFEMOTION_OT_mapping_use,
           SAFEMOTION_OT_mapping_save_preset, SAFEMOTION_OT_mapping_load_preset, SAFEMOTION_OT_mapping_edit)
PANELS = (SAFEMOTION_PT_bone_mapping,)


def register() -> None:
    """Register the editor's classes and `scene.safemotion_mapping` (the panel comes with the other panels)."""
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.safemotion_mapping = PointerProperty(type=SafeMotionMappingEditor)


def unregister() -> None:
    """Remove what `register` added."""
    del bpy.types.Scene.safemotion_mapping
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
