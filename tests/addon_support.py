"""What the add-on tests share (real bpy wheel): the add-on enabled as a real extension, clean scenes, a real server.

The add-on is enabled the way Blender enables an installed extension: a local extension repository (module
`safemotion_tests`, a temporary folder) holds `safemotion/`, whose entries are symlinks to `blender_manifest.toml` and
the files of `blender_addon/` (the developer set-up of the Blender manual: edits are live). The package is therefore
`bl_ext.safemotion_tests.safemotion` and its preferences live in `context.preferences.addons[ADDON_MODULE]`, exactly as
for users. Reach its modules through the fixture's module (`addon.client`, `addon.ops_generate`, ...), not through
`blender_addon.*`: those are other module objects (other classes, other BackendError).

Importing this module points Blender's user extension folder (BLENDER_USER_EXTENSIONS) at a temporary folder for
the rest of the process, so the extension manager's caches and the add-on's user data never reach the user's config.

Rules for tests that use these fixtures:
- import bpy with `bpy = pytest.importorskip("bpy")` before importing this module;
- reset scenes with `bpy.ops.wm.read_homefile(use_empty=True)` (the `clean_scene` fixture), never
  `read_factory_settings`: that also resets the preferences, which disables the add-on and drops the test repository;
- `tiny_server` starts one `safemotion serve` per test module (tiny random LCR model, loopback, single-user mode);
- on bpy wheels before 5.0 the `addon` fixture makes the pytest process leave with `os._exit(status)` once pytest is
  done: with torch also imported (the server's model), 4.2.23 segfaults and 4.5.15 hangs in Blender's shutdown.

Also here: `CheckingLayout`, a stand-in for UILayout that checks every name a draw function uses, and the synthetic
SMPL motion (`rest_skeleton`, `synthetic_motion`) that the take and key-writer tests animate.

Usage:
    bpy = pytest.importorskip("bpy")
    from addon_support import addon, clean_scene, tiny_server, use_server  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import addon_utils
import bpy
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ADDON_SOURCE = REPO_ROOT / "blender_addon"
MANIFEST = REPO_ROOT / "blender_manifest.toml"
REPO_MODULE = "safemotion_tests"
ADDON_ID = "safemotion"  # the manifest's id
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.{ADDON_ID}"
SCENE_FPS = 20  # the motions' own rate: one key per scene frame

# For the whole test process, Blender's user extension folder (extension manager caches, the add-on's user data) is a
# temporary folder: no test writes into the user's Blender configuration.
_STAGING = Path(tempfile.mkdtemp(prefix="safemotion_addon_tests_"))
atexit.register(shutil.rmtree, _STAGING, True)
os.environ["BLENDER_USER_EXTENSIONS"] = str(_STAGING / "user_extensions")


def _stage_repository() -> Path:
    """Once per process: a temporary repository folder with safemotion/ linking to the manifest and add-on files."""
    repo = _STAGING / "repo"
    if not repo.is_dir():
        package = repo / ADDON_ID
        package.mkdir(parents=True)
        sources = [MANIFEST] + [p for p in sorted(ADDON_SOURCE.iterdir()) if p.name != "__pycache__"]
        for source in sources:
            try:
                (package / source.name).symlink_to(source, target_is_directory=source.is_dir())
            except OSError:  # no symlinks (e.g. Windows without developer mode): copy instead
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, package / source.name)
    return repo


def _ensure_repository() -> None:
    """Register the test repository in the preferences (again, if a factory reset dropped it)."""
    repos = bpy.context.preferences.extensions.repos
    if not any(repo.module == REPO_MODULE for repo in repos):
        repos.new(name="SafeMotion tests", module=REPO_MODULE, custom_directory=str(_stage_repository()),
                  source="USER")


def enable_addon():
    """Enable the add-on as extension `ADDON_MODULE` (register() runs) and return its package module."""
    _ensure_repository()
    errors: list[BaseException] = []
    module = addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=errors.append)
    if module is None:
        raise RuntimeError(f"enabling {ADDON_MODULE} failed: {errors!r}") from (errors[0] if errors else None)
    return module


def disable_addon() -> None:
    """Disable the add-on (unregister() runs) and remove the test repository from the preferences."""
    if ADDON_MODULE in bpy.context.preferences.addons:
        addon_utils.disable(ADDON_MODULE, default_set=True)
    repos = bpy.context.preferences.extensions.repos
    for repo in [r for r in repos if r.module == REPO_MODULE]:
        repos.remove(repo)


def addon_module(name: str):
    """A module of the enabled add-on, e.g. addon_module("armature")."""
    return importlib.import_module(f"{ADDON_MODULE}.{name}")


def preferences():
    """The add-on's AddonPreferences instance."""
    return bpy.context.preferences.addons[ADDON_MODULE].preferences


def use_server(url: str, api_key: str = "", timeout: float = 30.0) -> None:
    """Point the add-on at an already running server (mode REMOTE; a loopback URL needs no online access)."""
    prefs = preferences()
    prefs.backend_mode = "REMOTE"
    prefs.server_url = url
    prefs.api_key = api_key
    prefs.timeout = timeout


class ExitGuard:
    """pytest plugin for bpy before 5.0: after pytest's last step, exit with its status, skipping Blender's shutdown."""

    name = "safemotion_bpy_exit_guard"

    def __init__(self):
        self.status = 0

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self.status = int(exitstatus)

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config) -> None:
        shutil.rmtree(_STAGING, ignore_errors=True)  # os._exit skips atexit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.status)


@pytest.fixture(scope="module")
def addon(request):
    """The enabled add-on package for the whole test module; disabled again (nothing left behind) afterwards."""
    plugins = request.config.pluginmanager
    if bpy.app.version < (5, 0, 0) and not plugins.has_plugin(ExitGuard.name):
        plugins.register(ExitGuard(), ExitGuard.name)
    module = enable_addon()
    yield module
    disable_addon()


@pytest.fixture
def clean_scene(addon):
    """An empty new file at 20 fps for each test (the add-on stays enabled)."""
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.context.scene.render.fps = SCENE_FPS
    bpy.context.scene.render.fps_base = 1.0
    yield bpy.context.scene
    bpy.ops.wm.read_homefile(use_empty=True)


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """A real `safemotion serve` on a free loopback port with the tiny random LCR model (one per test module)."""
    server_support = pytest.importorskip("server_support")  # needs the backend (torch, safemotion)
    root = tmp_path_factory.mktemp("addon_server")
    model = server_support.build_tiny_lcr_model(root / "tiny-lcr")
    server = server_support.ServerProcess(model, root / "data", root / "server.log", "--max-batch", "8")
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------- synthetic motion

def rest_skeleton() -> np.ndarray:
    """The backend's SMPL T-pose [24, 3] (Y-up): what the server sends as the rest skeleton."""
    smpl = pytest.importorskip("safemotion.motion.smpl")
    return smpl.smpl_rest_joints()


def synthetic_motion(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random SMPL pose [T, 24, 3] (axis-angle) and a walk forward with sway [T, 3] (Y-up)."""
    rng = np.random.default_rng(seed)
    keys = rng.normal(scale=0.5, size=(4, 24, 3))
    t = np.linspace(0.0, 1.0, frames)
    knots = np.linspace(0.0, 1.0, len(keys))
    pose = np.stack([np.stack([np.interp(t, knots, keys[:, j, k]) for k in range(3)], -1) for j in range(24)], 1)
    transl = np.stack([0.05 * np.sin(4 * np.pi * t), 0.02 * np.sin(8 * np.pi * t), 1.5 * t], axis=-1)
    return pose, transl


def select(active, *others) -> None:
    """Select exactly `active` and `others`, `active` active."""
    view_layer = bpy.context.view_layer
    for obj in view_layer.objects:
        obj.select_set(False)
    for obj in (active, *others):
        if obj is not None:
            obj.select_set(True)
    view_layer.objects.active = active


# ---------------------------------------------------------------------------------------------- drawing

ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())


class OperatorButton:
    """What `layout.operator()` returns: only the operator's own properties may be set."""

    def __init__(self, idname: str):
        module, name = idname.split(".")
        self.__dict__["_properties"] = set(getattr(getattr(bpy.ops, module), name).get_rna_type().properties.keys())

    def __setattr__(self, name, value):
        assert name in self._properties, f"operator has no property {name!r}"


class CheckingLayout:
    """Stands in for bpy.types.UILayout, which the module build never creates (draw() is never called there):
    every property, operator, list type and icon that a draw function names must exist in Blender."""

    def __init__(self, calls: list):
        self.calls = calls

    def _sub(self, *args, **kwargs):
        return CheckingLayout(self.calls)

    row = column = box = split = _sub

    def _icon(self, icon: str) -> None:
        assert icon in ICONS, f"unknown icon {icon!r}"

    def prop(self, data, name, text=None, icon="NONE", **kwargs):
        assert name in data.bl_rna.properties, f"{data.bl_rna.identifier} has no property {name!r}"
        self._icon(icon)
        self.calls.append(("prop", name))

    def operator(self, idname, text=None, icon="NONE", **kwargs):
        self._icon(icon)
        self.calls.append(("operator", idname))
        return OperatorButton(idname)

    def prop_search(self, data, name, search_data, search_name, text=None, icon="NONE", **kwargs):
        assert name in data.bl_rna.properties, f"{data.bl_rna.identifier} has no property {name!r}"
        assert search_name in search_data.bl_rna.properties, f"{search_data.bl_rna.identifier} has no {search_name!r}"
        self._icon(icon)
        self.calls.append(("prop_search", text))

    def operator_menu_enum(self, idname, property, text=None, icon="NONE", **kwargs):
        module, name = idname.split(".")
        assert property in getattr(getattr(bpy.ops, module), name).get_rna_type().properties.keys()
        self._icon(icon)
        self.calls.append(("operator", idname))

    def label(self, text="", icon="NONE", **kwargs):
        self._icon(icon)
        self.calls.append(("label", text))

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0 and type in ("BAR", "RING")
        self.calls.append(("progress", text))

    def template_list(self, list_type, list_id, data, prop, active_data, active_prop, **kwargs):
        assert hasattr(bpy.types, list_type), f"UIList {list_type!r} is not registered"
        assert prop in data.bl_rna.properties and active_prop in active_data.bl_rna.properties
        self.calls.append(("list", list_type))

    def separator(self, **kwargs):
        pass
