"""SafeMotion Blender extension (Blender 4.2–5.0): text-to-motion with unlearned violent content, retargeting.

The add-on talks HTTP to a SafeMotion server (a bundled local one it starts itself, or a URL) and never imports
torch. Modules: client (HTTP), backend_process (the bundled server), preferences, properties (scene data),
ops_generate (Generate and takes), ops_batch (many prompts), ops_motion (retarget, audit, export), ops_edit (regenerate
a range, extend, in-between), mapping_editor (the bone-mapping editor), scene_guard (one guard for every
scene-writing operator), safety (the decisions, the CSV/JSON report), panels (the sidebar). The maths lives in bpy-free
modules: smpl_math, retarget, batch_prompts.

`register` and `unregister` are exact opposites: after `unregister` no class, scene property, handler, timer or
server process of the add-on is left.
"""

from __future__ import annotations

import atexit

import bpy

from . import (
    backend_process,
    mapping_editor,
    ops_batch,
    ops_edit,
    ops_generate,
    ops_motion,
    panels,
    preferences,
    properties,
    safety,
    scene_guard,
)

# Registered in this order (property groups before what points at them), unregistered in reverse.
_CLASSES = (*preferences.CLASSES, *ops_generate.CLASSES, *ops_edit.CLASSES, *safety.CLASSES)
_MODULES = (ops_batch, ops_motion, mapping_editor)


def register() -> None:
    """Register the add-on's classes, scene properties, file-load handler and exit hook with Blender."""
    properties.register()
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    for module in _MODULES:
        module.register()
    for cls in panels.CLASSES:
        bpy.utils.register_class(cls)
    bpy.app.handlers.load_pre.append(ops_generate.cancel_on_load)
    atexit.register(backend_process.stop_server)


def unregister() -> None:
    """Undo `register`: cancel generations and edits in flight, stop a running batch (Resume continues it), stop the
    bundled server, remove everything registered."""
    ops_generate.cancel_all()
    ops_batch.stop_running()
    scene_guard.clear()
    atexit.unregister(backend_process.stop_server)
    backend_process.stop_server()
    if ops_generate.cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(ops_generate.cancel_on_load)
    for cls in reversed(panels.CLASSES):
        bpy.utils.unregister_class(cls)
    for module in reversed(_MODULES):
        module.unregister()
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
    properties.unregister()
