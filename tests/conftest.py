"""Shared pytest fixtures: the read-only ../shared material, skipped cleanly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("SAFEMOTION_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder (reference material and data); skips the test when it is absent."""
    path = _shared_dir()
    if not (path / "data").is_dir():
        pytest.skip(f"shared material not found at {path} (set SAFEMOTION_SHARED)")
    return path


@pytest.fixture(scope="session")
def humanml3d_sample(shared_dir: Path) -> Path:
    """Folder with HumanML3D sample clip 012314 (joints and 263-d features) and Mean/Std."""
    path = shared_dir / "data" / "humanml3d_sample"
    if not (path / "new_joints_012314.npy").is_file():
        pytest.skip("HumanML3D sample not staged")
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes-long checks on the committed models; run with SAFEMOTION_SLOW=1")


def pytest_collection_modifyitems(config, items):
    """Skip `slow` tests unless SAFEMOTION_SLOW=1 (make test stays short; the eval commands run the same checks)."""
    if os.environ.get("SAFEMOTION_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set SAFEMOTION_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest (and least disturbed by other processes) on one thread; use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
