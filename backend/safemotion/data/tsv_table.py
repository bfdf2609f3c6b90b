"""Tab-separated metadata tables of the shared data sources (labels.tsv, captions.tsv), read with line numbers."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path


def read_tsv(path: Path, columns: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a tab-separated file whose header has at least `columns`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata table not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = columns - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {sorted(missing)}")
        for row in reader:
            yield reader.line_num, row
