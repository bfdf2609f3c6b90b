"""The sidebar (3D View ▸ N ▸ SafeMotion): prompt and settings, Generate with progress and Cancel, the safety state
of the last result, the takes (Apply / Discard), the take tools and batch sections (drawn by ops_motion and
ops_batch), and the flagged generations of the file with the CSV report.

Drawing only reads the scene and the preferences; it never talks to the server.
"""

from __future__ import annotations

import bpy

from . import mapping_editor, ops_batch, ops_edit, ops_motion
from .ops_generate import (
    SAFEMOTION_OT_apply_take,
    SAFEMOTION_OT_cancel_generation,
    SAFEMOTION_OT_discard_take,
    SAFEMOTION_OT_generate,
    running_job,
)
from .preferences import ADDON_PACKAGE
from .safety import SAFEMOTION_OT_export_safety_report

CATEGORY = "SafeMotion"


def _draw_safety(layout: bpy.types.UILayout, safety: bpy.types.PropertyGroup) -> None:
    """Flag, hit ratio and decision of one safety record."""
    if not safety.screened:
        layout.label(text="Not screened: the model has no removed codes", icon="INFO")
        return
    icon = "ERROR" if safety.flagged else "CHECKMARK"
    layout.label(text=f"{'Flagged' if safety.flagged else 'Not flagged'} — {safety.decision}", icon=icon)
    row = layout.row()
    row.label(text=f"Hit ratio {safety.hit_ratio:.0%} (threshold {safety.threshold:.0%}"
                   f"{'' if safety.calibrated else ', uncalibrated'})")
    for signal in safety.signals.split("; ") if safety.signals else []:
        layout.label(text=signal, icon="DOT")
    if safety.reason:
        layout.label(text=safety.reason)


class _Sidebar:
    """Where every SafeMotion panel lives: the 3D View's sidebar, SafeMotion tab."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY


class _Section(_Sidebar):
    """A sub-panel of the main SafeMotion panel."""

    bl_parent_id = "SAFEMOTION_PT_generate"


class SAFEMOTION_PT_generate(_Sidebar, bpy.types.Panel):
    """Prompt, settings and the Generate button."""

    bl_label = "SafeMotion"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.safemotion
        job = running_job(context.scene)
        col = layout.column()
        col.enabled = job is None
        col.prop(settings, "prompt", text="")
        col.prop(settings, "seconds")
        row = col.row(align=True)
        sub = row.row(align=True)
        sub.enabled = not settings.random_seed
        sub.prop(settings, "seed")
        row.prop(settings, "random_seed", text="", icon="FILE_REFRESH")
        col.prop(settings, "variations")
        col.prop(settings, "policy")
        col.prop(settings, "foot_cleanup")
        col.prop(settings, "skin_body")
        col.prop(settings, "start_at_playhead")
        col.prop(settings, "target_armature")
        sub = col.row(align=True)
        sub.enabled = settings.target_armature is not None
        sub.prop(settings, "bone_preset")
        sub.operator(mapping_editor.SAFEMOTION_OT_mapping_edit.bl_idname, text="", icon="BONE_DATA")
        needed = context.scene.safemotion_mapping.needed
        if needed:
            box = layout.box()
            box.alert = True
            box.label(text="The target's bones need mapping: open Bone Mapping below", icon="ERROR")
        if job is None:
            layout.operator(SAFEMOTION_OT_generate.bl_idname, icon="PLAY")
        else:
            row = layout.row(align=True)
            row.progress(factor=settings.progress, type="BAR", text=settings.status or "Generating…")
            row.operator(SAFEMOTION_OT_cancel_generation.bl_idname, text="", icon="CANCEL")
        if settings.status and job is None:
            layout.label(text=settings.status)
        addon = context.preferences.addons.get(ADDON_PACKAGE)
        if addon is not None:
            prefs = addon.preferences
            where = "this machine (bundled server)" if prefs.backend_mode == "BUNDLED" else prefs.server_url
            layout.label(text=f"Prompts are sent to {where}", icon="URL")


class SAFEMOTION_PT_last_result(_Section, bpy.types.Panel):
    """Safety state of the last generation."""

    bl_label = "Last Result"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return bool(context.scene.safemotion.last_safety.decision)

    def draw(self, context: bpy.types.Context) -> None:
        _draw_safety(self.layout, context.scene.safemotion.last_safety)


class SAFEMOTION_UL_takes(bpy.types.UIList):
    """One row per take: name, flag, Apply and Discard."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.label(text=item.name, icon="ERROR" if item.safety.flagged else "ARMATURE_DATA")
        row.operator(SAFEMOTION_OT_apply_take.bl_idname, text="", icon="CHECKMARK").index = index
        row.operator(SAFEMOTION_OT_discard_take.bl_idname, text="", icon="TRASH").index = index


class SAFEMOTION_PT_takes(_Section, bpy.types.Panel):
    """The takes of past generations in this scene."""

    bl_label = "Takes"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.safemotion
        self.layout.template_list("SAFEMOTION_UL_takes", "", settings, "takes", settings, "active_take", rows=3)
        if 0 <= settings.active_take < len(settings.takes):
            take = settings.takes[settings.active_take]
            box = self.layout.box()
            box.label(text=f"Seed {take.seed}, {take.frames} frames from frame {take.frame_start}")
            for warning in filter(None, take.seam_warnings.split("\n")):
                box.label(text=warning, icon="ERROR")
            _draw_safety(box, take.safety)
            ops_edit.draw_edit(self.layout, context)


class SAFEMOTION_PT_take_tools(_Section, bpy.types.Panel):
    """Retarget, audit and export the active armature's action."""

    bl_label = "Retarget, Audit, Export"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        ops_motion.draw_motion(self.layout, context)


class SAFEMOTION_PT_batch(_Section, bpy.types.Panel):
    """Many prompts at once."""

    bl_label = "Batch"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        ops_batch.draw_batch(self.layout, context)


class SAFEMOTION_UL_flagged(bpy.types.UIList):
    """One row per safety decision: take, decision and hit ratio."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row()
        row.label(text=item.name, icon="ERROR" if item.safety.flagged else "VIEWZOOM")
        row.label(text=f"{item.safety.decision} {item.safety.hit_ratio:.0%}")


class SAFEMOTION_PT_safety(_Section, bpy.types.Panel):
    """Safety decisions of this file (sanitized, blocked, allowed, audited) and the report."""

    bl_label = "Safety"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.safemotion
        layout.label(text="Violent motion is removed from the model (unlearning);", icon="INFO")
        layout.label(text="every sanitized, blocked, allowed or audited take is listed here.")
        layout.template_list("SAFEMOTION_UL_flagged", "", settings, "flagged", settings, "active_flagged", rows=3)
        if 0 <= settings.active_flagged < len(settings.flagged):
            entry = settings.flagged[settings.active_flagged]
            box = layout.box()
            box.label(text=f"{entry.event}: {entry.prompt or entry.action_name} (seed {entry.seed}, {entry.created}, "
                           f"{entry.who})")
            if entry.spans:
                box.label(text=f"Flagged frames: {entry.spans}")
            _draw_safety(box, entry.safety)
            if entry.note:
                box.label(text=entry.note)
        layout.operator(SAFEMOTION_OT_export_safety_report.bl_idname, icon="EXPORT")


CLASSES = (SAFEMOTION_PT_generate, *mapping_editor.PANELS, SAFEMOTION_PT_last_result, SAFEMOTION_UL_takes, SAFEMOTION_PT_takes,
           SAFEMOTION_PT_take_tools, SAFEMOTION_PT_batch, SAFEMOTION_UL_flagged, SAFEMOTION_PT_safety)
