"""Build and validate the Blender extension zip with Blender's own `blender_ext.py` (shipped inside the bpy wheel)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# The platform tag set for add-ons (extensions.blender.org); standalone blender_ext.py checks tags only when given a list.
ADDON_TAGS = [
    "3D View", "Add Curve", "Add Mesh", "Animation", "Bake", "Camera", "Compositing", "Development", "Game Engine",
    "Geometry Nodes", "Grease Pencil", "Import-Export", "Lighting", "Material", "Modeling", "Mesh", "Node", "Object",
    "Paint", "Pipeline", "Physics", "Render", "Rigging", "Scene", "Sculpt", "Sequencer", "System", "Text Editor",
    "Tracking", "User Interface", "UV",
]


def find_blender_ext() -> Path:
    """Locate `blender_ext.py` inside the installed bpy wheel."""
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("bpy is not installed: run `make test` once (it installs bpy==5.0.1 into .venv)")
    matches = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not matches:
        raise FileNotFoundError(f"blender_ext.py not found under {Path(spec.origin).parent}")
    return matches[-1]


def stage_source(stage: Path) -> Path:
    """Copy the manifest and the add-on package into one folder, the layout Blender expects."""
    stage.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO_ROOT / "blender_manifest.toml", stage / "blender_manifest.toml")
    shutil.copytree(
        REPO_ROOT / "blender_addon", stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return stage


def _run_blender_ext(args: list[str], tags_file: Path) -> None:
    cmd = [sys.executable, str(find_blender_ext()), *args, "--valid-tags", str(tags_file)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"blender_ext {args[0]} failed:\n{result.stdout}{result.stderr}")


def build_extension(out_dir: Path) -> Path:
    """Validate the add-on source and build `safemotion-<version>.zip` into `out_dir`; returns the zip's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tags_file = tmp_path / "tags.json"
        tags_file.write_text(json.dumps({"add-on": ADDON_TAGS, "theme": []}))
        source = stage_source(tmp_path / "source")
        _run_blender_ext(["validate", str(source)], tags_file)
        (tmp_path / "dist").mkdir()
        _run_blender_ext(["build", "--source-dir", str(source), "--output-dir", str(tmp_path / "dist")], tags_file)
        (built,) = (tmp_path / "dist").glob("*.zip")
        _run_blender_ext(["validate", str(built)], tags_file)
        target = out_dir / built.name
        shutil.move(str(built), target)
    return target


def main() -> int:
    """Command-line entry: build the extension zip into --out (default dist/)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist")
    zip_path = build_extension(parser.parse_args().out)
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
