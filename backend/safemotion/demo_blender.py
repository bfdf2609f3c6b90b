"""The Blender process of `make demo`: Blender as a Python module (bpy) with the SafeMotion add-on as an extension.

`python -m safemotion.demo_blender REQUEST.json RESULT.json` (started by safemotion.demo) enables the add-on of this
source tree the way Blender enables an installed extension: a local extension repository (module `safemotion_demo`,
a folder given in the request) holds `safemotion/` with links to `blender_manifest.toml` and the files of
`blender_addon/`. The add-on's `demo_scene.run_demo` then does the work; disabling the add-on at the end stops its
bundled server whatever happened. Start this process with BLENDER_USER_RESOURCES set to a scratch folder so the
user's own Blender preferences are neither read nor changed. This module is never imported by the backend: it needs
bpy and runs only in that process.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import traceback
from pathlib import Path

import bpy
import addon_utils  # isort: skip (importable only once bpy is)

import safemotion

SOURCE_ROOT = Path(safemotion.__file__).resolve().parents[2]
ADDON_SOURCE = SOURCE_ROOT / "blender_addon"
MANIFEST = SOURCE_ROOT / "blender_manifest.toml"
REPO_MODULE = "safemotion_demo"
ADDON_ID = "safemotion"  # the manifest's id
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.{ADDON_ID}"


def stage_repository(repo_dir: Path) -> None:
    """Fill `repo_dir` with safemotion/: links to the manifest and add-on files (copies where links are refused)."""
    if not (ADDON_SOURCE / "__init__.py").is_file() or not MANIFEST.is_file():
        raise FileNotFoundError(f"the SafeMotion add-on sources are not at {SOURCE_ROOT} (blender_addon/ and "
                                "blender_manifest.toml); the demo runs from a source checkout with the backend "
                                "installed in editable mode (`make demo` does that)")
    package = repo_dir / ADDON_ID
    package.mkdir(parents=True)
    for source in [MANIFEST] + [p for p in sorted(ADDON_SOURCE.iterdir()) if p.name != "__pycache__"]:
        try:
            (package / source.name).symlink_to(source, target_is_directory=source.is_dir())
        except OSError:  # no symlinks (e.g. Windows without developer mode)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, package / source.name)


def enable_addon(repo_dir: Path):
    """Register `repo_dir` as a local extension repository, enable the add-on in it, return its package module."""
    stage_repository(repo_dir)
    bpy.context.preferences.extensions.repos.new(name="SafeMotion demo", module=REPO_MODULE,
                                                 custom_directory=str(repo_dir), source="USER")
    errors: list[BaseException] = []
    module = addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=errors.append)
    if module is None:
        raise RuntimeError(f"enabling {ADDON_MODULE} failed: {errors!r}") from (errors[0] if errors else None)
    return module


def main(argv: list[str]) -> int:
    """Read the request, run the demo scene with the add-on enabled, write the result; 1 on error (message printed)."""
    if len(argv) != 2:
        print("usage: python -m safemotion.demo_blender REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text())
    addon = None
    try:
        addon = enable_addon(Path(request.pop("extension_repo")))
        demo_scene = importlib.import_module(f"{ADDON_MODULE}.demo_scene")
        result = demo_scene.run_demo(demo_scene.DemoRequest(**request))
    except Exception as err:  # noqa: BLE001 - reported to the demo's caller, which fails with it
        traceback.print_exc()
        log = addon.preferences.server_data_dir() / addon.backend_process.LOG_FILE if addon else None
        if log is not None and log.is_file():
            print(f"--- end of the server log {log}:", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
        print(f"safemotion demo (Blender): {err}", file=sys.stderr)
        return 1
    finally:
        if ADDON_MODULE in bpy.context.preferences.addons:
            addon_utils.disable(ADDON_MODULE, default_set=True)  # unregister stops the bundled server
    result_path.write_text(json.dumps(result, indent=2))  # only read once this process exited with 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
