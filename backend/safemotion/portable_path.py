"""Paths as published files record them (reports, model configs, training records): never a machine's absolute path.

A path inside the repository is written relative to it, one inside the working folder relative to that, and any other
by its last two components, so the same report reads the same on every checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def portable_path(path: str | os.PathLike) -> str:
    """`path` relative to the repository or the working folder, else its last two components."""
    resolved = Path(path).resolve()
    for base in (REPO_ROOT, Path.cwd().resolve()):
        if resolved.is_relative_to(base):
            return resolved.relative_to(base).as_posix() or "."
    return Path(*resolved.parts[-2:]).as_posix()


def portable_command(argv: list[str]) -> str:
    """A command line with every absolute path in it (also as `name=PATH`, and in comma-separated lists) made portable."""
    def item(text: str) -> str:
        name, sep, value = text.rpartition("=")
        if sep and os.path.isabs(value):
            return f"{name}={portable_path(value)}"
        return portable_path(text) if os.path.isabs(text) else text

    return " ".join(",".join(item(part) for part in a.split(",")) for a in argv)
