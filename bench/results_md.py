"""bench/RESULTS.md: each benchmark owns one `## ...` section, replaced in place (or appended) atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(heading: str, text: str, path: Path = RESULTS) -> None:
    """Replace the section that starts with `heading` by `text` (or append it); other sections stay as they are."""
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if heading in old:
        start = old.index(heading)
        rest = old[start + len(heading):]
        end = rest.find("\n## ")
        new = old[:start] + text.rstrip("\n") + "\n" + ("" if end < 0 else "\n" + rest[end + 1:])
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(new)
    os.replace(tmp, path)
