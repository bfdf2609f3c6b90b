"""Atomic outputs: a finished folder replaces the old one in one step; text files are written whole or not at all."""

from __future__ import annotations

import stat

import pytest

from safemotion import atomic_dir
from safemotion.atomic_dir import replace_dir, write_text_atomic


def test_replace_dir_swaps_in_the_new_folder_and_removes_the_old(tmp_path):
    dst, src = tmp_path / "model", tmp_path / "staging"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    src.mkdir()
    (src / "new.txt").write_text("new")
    replace_dir(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in dst.iterdir()] == ["new.txt"]


def test_write_text_atomic_creates_replaces_and_is_world_readable(tmp_path):
    path = tmp_path / "sub" / "flags.json"
    assert write_text_atomic(path, "first\n") == path
    write_text_atomic(path, "second ✓\n")
    assert path.read_text(encoding="utf-8") == "second ✓\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["flags.json"]


def test_write_text_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text("kept")

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_dir.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "lost")
    assert path.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
