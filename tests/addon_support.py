"""What the add-on tests share (real bpy wheel): the add-on enabled as a real extension, clean scenes, a real server.

The add-on is enabled the way Blender enables an installed extension: a local extension repository (module
`safemotion_tests`, a temporary folder) holds `safemotion/`, whose entries are symlinks to `blender_manifest.toml` and
the files of `blender_addon/` (the developer set-up of the Blender manual: edits are live). The package is therefore
`bl_ext.safemotion_tests.safemotion` and its preferences live in `context.preferences.addons[ADDON_MODULE]`, exactly as
for users. Reach its modules through the fixture's module (`addon.client`, `addon.ops_generate`, ...), not through
`blender_addon.*`: those are other module objects (other classes, other BackendError).

Rules for tests that use these fixtures:
- import bpy with `bpy = pytest.importorskip("bpy")` before importing this module;
- reset scenes with `bpy.ops.wm.read_homefile(use_empty=True)` (the `clean_scene` fixture), never
  `read_factory_settings`: that also resets the preferences, which disables the add-on and drops the test repository;
- `tiny_server` starts one `safemotion serve` per test module (tiny random LCR model, loopback, single-user mode).

Usage:
    bpy = pytest.importorskip("bpy")
    from addon_support import addon, clean_scene, tiny_server, use_server  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import addon_utils
import bpy
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ADDON_SOURCE = REPO_ROOT / "blender_addon"
MANIFEST = REPO_ROOT / "blender_manifest.toml"
REPO_MODULE = "safemotion_tests"
ADDON_ID = "safemotion"  # the manifest's id
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.{ADDON_ID}"
SCENE_FPS = 20  # the motions' own rate: one key per scene frame

_repo_dir: Path | None = None


def _stage_repository() -> Path:
    """Once per process: a temporary repository folder with safemotion/ linking to the manifest and add-on files."""
    global _repo_dir
    if _repo_dir is None:
        root = Path(tempfile.mkdtemp(prefix="safemotion_ext_repo_"))
        atexit.register(shutil.rmtree, root, True)
        package = root / ADDON_ID
        package.mkdir()
        sources = [MANIFEST] + [p for p in sorted(ADDON_SOURCE.iterdir()) if p.name != "__pycache__"]
        for source in sources:
            try:
                (package / source.name).symlink_to(source, target_is_directory=source.is_dir())
            except OSError:  # no symlinks (e.g. Windows without developer mode): copy instead
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, package / source.name)
        _repo_dir = root
    return _repo_dir


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


@pytest.fixture(scope="module")
def addon():
    """The enabled add-on package for the whole test module; disabled again (nothing left behind) afterwards."""
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
