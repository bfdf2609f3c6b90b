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


def publish(heading: str, text: str, path: Path = RESULTS, write: bool = True) -> None:
    """Print a benchmark's section and, when `write`, put it into the results file (see write_section)."""
    print(text)
    if write:
        write_section(heading, text, path)
        print(f"\nwritten to {path}")


def machine() -> str:
    """CPU model, cores, GPU if any, Python and torch builds, torch threads and load average, as one line."""
    import platform

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} logical cores{gpu}, Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread(s)); load average (1/5/15 min) {load}")
