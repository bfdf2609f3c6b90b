"""The extension zip builds, passes Blender's own validator, and installs, enables, disables and uninstalls through
Blender's extension manager (the `extensions.package_install_files` operator of the bl_pkg add-on) like a user's
"Install from Disk"."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packaging"))
bpy = pytest.importorskip("bpy")

from build_extension import build_extension  # noqa: E402

REPO_MODULE = "safemotion_zip_test"  # a local user repository of its own, in a temporary folder
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.safemotion"
OPERATORS = {"generate", "cancel_generation", "apply_take", "discard_take", "batch_generate", "retarget_action",
             "audit_action", "export_motion", "export_safety_report", "server_start", "check_connection"}
PANELS = {"SAFEMOTION_PT_generate", "SAFEMOTION_PT_takes", "SAFEMOTION_PT_batch", "SAFEMOTION_PT_safety"}


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory) -> Path:
    """The zip `packaging/build_extension.py` builds (validated before and after building)."""
    return build_extension(tmp_path_factory.mktemp("dist"))


def test_extension_zip_builds_and_validates(extension_zip: Path) -> None:
    assert extension_zip.name == "safemotion-0.1.0.zip"
    names = set(zipfile.ZipFile(extension_zip).namelist())
    assert {"blender_manifest.toml", "__init__.py", "panels.py", "ops_generate.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def footprint() -> dict[str, object]:
    """What an enabled SafeMotion add-on puts into Blender: operator/panel/list types, operators, the scene property,
    its entry in the enabled add-ons."""
    return {
        "types": sorted(n for n in dir(bpy.types) if n.startswith("SAFEMOTION_")),
        "operators": sorted(dir(bpy.ops.safemotion)),
        "scene_property": "safemotion" in bpy.types.Scene.bl_rna.properties,
        "enabled": ADDON_MODULE in bpy.context.preferences.addons,
    }


def test_zip_installs_enables_and_uninstalls_through_the_extension_manager(extension_zip, tmp_path, monkeypatch):
    # Blender's user folders point into tmp_path: the manager's caches land there, not in the user's config.
    for kind in ("CONFIG", "SCRIPTS", "EXTENSIONS"):
        monkeypatch.setenv(f"BLENDER_USER_{kind}", str(tmp_path / kind.lower()))
    empty = footprint()
    assert empty == {"types": [], "operators": [], "scene_property": False, "enabled": False}, (
        "a SafeMotion add-on is already enabled in this process; disable it before this test")
    repo_dir = tmp_path / "repo"
    repos = bpy.context.preferences.extensions.repos
    repo = repos.new(name="SafeMotion zip test", module=REPO_MODULE, custom_directory=str(repo_dir), source="USER")
    try:
        result = bpy.ops.extensions.package_install_files(filepath=str(extension_zip), repo=REPO_MODULE,
                                                          enable_on_install=True)
        assert result == {"FINISHED"}
        installed = repo_dir / "safemotion"
        assert (installed / "blender_manifest.toml").is_file() and (installed / "__init__.py").is_file()

        enabled = footprint()
        assert enabled["enabled"] and enabled["scene_property"]
        assert PANELS | {"SAFEMOTION_OT_generate", "SAFEMOTION_UL_takes"} <= set(enabled["types"])
        assert OPERATORS <= set(enabled["operators"])
        assert type(bpy.context.preferences.addons[ADDON_MODULE].preferences).bl_idname == ADDON_MODULE
        assert bpy.ops.safemotion.generate.poll()  # a scene exists and no generation runs

        assert bpy.ops.preferences.addon_disable(module=ADDON_MODULE) == {"FINISHED"}
        assert footprint() == empty
        assert installed.is_dir()  # disabled, still installed

        assert bpy.ops.extensions.package_uninstall(repo_directory=str(repo_dir), pkg_id="safemotion") == {"FINISHED"}
        assert not installed.exists()
        assert footprint() == empty
    finally:
        if ADDON_MODULE in bpy.context.preferences.addons:
            bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
        repos.remove(repo)
    assert not any(r.module == REPO_MODULE for r in repos)
