"""Putting a finished output file or folder in place in one step, so readers never see a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_dir(src: Path, dst: Path) -> None:
    """Rename the finished folder src to dst; an existing dst is moved aside first and removed only after the swap."""
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.rename(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    os.rmdir(old)
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text (UTF-8) to path through a temporary file in the same folder and os.replace; returns path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write bytes to path through a temporary file in the same folder and os.replace; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
