"""Published files (reports, model configs, training records) name no absolute path of the machine that wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safemotion.portable_path import REPO_ROOT, portable_command, portable_path

PUBLISHED = [*REPO_ROOT.glob("reports/*/report.json"), *REPO_ROOT.glob("backend/safemotion/assets/**/*.json"),
             *REPO_ROOT.glob("backend/safemotion/assets/**/*.md"), *REPO_ROOT.glob("reports/*/*.md")]


def test_paths_are_relative_to_the_repository_or_cut_to_their_last_two_parts(tmp_path, monkeypatch):
    assert portable_path(REPO_ROOT / "datasets" / "safemotion-v1") == "datasets/safemotion-v1"
    assert portable_path(REPO_ROOT) == "."
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "runs" / "mini") == "runs/mini"
    assert portable_path("/somewhere/else/models/uce") == "models/uce"
    assert portable_command(["safemotion", "eval", "--models", f"a={REPO_ROOT}/m", "--out", "/x/y/out", "-k", "3"]) \
        == "safemotion eval --models a=m --out y/out -k 3"
    assert portable_command(["eval", "--models", "a=/x/y/m,b=/x/z/n,lcr"]) == "eval --models a=y/m,b=z/n,lcr"


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_published_files_name_no_absolute_path(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        json.loads(text)
    for root in ("/work/", "/tmp/", "/root/", "/home/", str(REPO_ROOT)):
        assert root not in text, f"{path}: names {root}; write paths with safemotion.portable_path"
