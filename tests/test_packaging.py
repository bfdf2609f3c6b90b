"""The extension zip builds and passes Blender's own validator."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packaging"))
pytest.importorskip("bpy")

from build_extension import build_extension  # noqa: E402


def test_extension_zip_builds_and_validates(tmp_path: Path) -> None:
    zip_path = build_extension(tmp_path)
    assert zip_path.name == "safemotion-0.1.0.zip"
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"blender_manifest.toml", "__init__.py"} <= names
    assert not any("__pycache__" in n for n in names)
