"""Batch prompt lists (no bpy): read prompts from text or .txt/.csv files, validate them, name an action for each.

Text (a Blender text block or a .txt file): one prompt per line; blank lines and lines starting with `#` are skipped.
CSV: a header row with a `prompt` column and optionally `seconds`, `seed` and `name` columns (any order, any case);
empty cells mean "use the panel's value". Every problem raises ValueError("SOURCE:LINE: what is wrong, how to fix").
The limits are the server's (POST /v1/jobs), checked here so that a bad line fails before anything is sent.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

MAX_PROMPT_CHARS = 300
SECONDS_RANGE = (0.5, 9.8)
MAX_SEED = 2**31 - 1  # seeds are stored in Blender integer properties (32-bit)
CSV_COLUMNS = ("prompt", "seconds", "seed", "name")
MAX_NAME_CHARS = 48  # Blender names hold 63 bytes; room is left for a ".001"-style or "_12" suffix


@dataclass(frozen=True)
class BatchPrompt:
    """One prompt of a batch: text, optional duration and seed, a unique action name, and where it was read."""

    prompt: str
    seconds: float | None
    seed: int | None
    name: str
    line: int


def parse_text(text: str, source: str = "text") -> list[BatchPrompt]:
    """Prompts of a plain list (one per line, `#` comment lines and blank lines skipped)."""
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        rows.append((number, line, None, None, None))
    return _finish(rows, source)


def parse_csv(text: str, source: str = "prompts.csv") -> list[BatchPrompt]:
    """Prompts of a CSV table with a `prompt` column and optional `seconds`, `seed`, `name` columns."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    rows = []
    start = 1  # the physical line where the next record begins (quoted cells may span lines)
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header, header_line = _read_header(record, source, line), line
                continue
            rows.append(_read_row(record, header, source, line))
    except csv.Error as err:
        raise ValueError(f"{source}:{reader.line_num}: not valid CSV ({err})") from None
    if header is None:
        raise ValueError(f"{source}:1: empty file; expected a header row with a 'prompt' column")
    if not rows:
        raise ValueError(f"{source}:{header_line}: the table has a header but no prompts")
    return _finish(rows, source)


def read_prompt_file(path: str | os.PathLike) -> list[BatchPrompt]:
    """Prompts of a .txt or .csv file (UTF-8, a byte-order mark is allowed)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".csv"):
        raise ValueError(f"{path}: unsupported prompt file type {suffix or '(none)'!r}; use a .txt or .csv file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found; choose an existing .txt or .csv prompt file") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path.name}:{line}: not UTF-8 text; save the file as UTF-8") from None
    return parse_csv(text, path.name) if suffix == ".csv" else parse_text(text, path.name)


def slug(text: str) -> str:
    """Lower-case ASCII words joined by underscores, at most MAX_NAME_CHARS long ("prompt" when nothing is left)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    name = ""
    for word in words:
        candidate = f"{name}_{word}" if name else word
        if len(candidate) > MAX_NAME_CHARS:
            break
        name = candidate
    return name or (words[0][:MAX_NAME_CHARS] if words else "prompt")


def unique_names(bases: list[str]) -> list[str]:
    """The names with `_2`, `_3`, ... appended to repeats, never colliding with another name of the list."""
    taken = set(bases)
    used: set[str] = set()
    names = []
    for base in bases:
        name, k = base, 1
        while name in used or (name != base and name in taken):
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        names.append(name)
    return names


# --- validation -----------------------------------------------------------------------------------------------------


def _read_header(record: list[str], source: str, line: int) -> list[str]:
    """Column names of a CSV header (lower-cased), checked: a prompt column, known names, no repeats."""
    header = [cell.strip().lower() for cell in record]
    if "prompt" not in header:
        raise ValueError(f"{source}:{line}: the header has no 'prompt' column (got {', '.join(header)}); "
                         "the first row must name the columns")
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown:
        raise ValueError(f"{source}:{line}: unknown column(s) {', '.join(map(repr, unknown))}; "
                         f"the header may name {', '.join(CSV_COLUMNS)}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"{source}:{line}: column(s) {', '.join(map(repr, repeated))} appear twice in the header")
    return header


def _read_row(record: list[str], header: list[str], source: str, line: int) -> tuple:
    """(line, prompt, seconds, seed, name) of one CSV record, with numbers parsed."""
    if len(record) > len(header):
        raise ValueError(f"{source}:{line}: {len(record)} cells but the header has {len(header)} columns; "
                         "quote prompts that contain commas")
    cells = dict(zip(header, (cell.strip() for cell in record)))
    where = f"{source}:{line}"
    seconds = _number(cells, "seconds", float, "a number", where)
    seed = _number(cells, "seed", int, "a whole number", where)
    return line, cells.get("prompt", ""), seconds, seed, cells.get("name") or None


def _number(cells: dict[str, str], column: str, kind: type, expected: str, where: str) -> float | int | None:
    """The cell of `column` as `kind`, None when absent or empty; ValueError naming `where` when it does not parse."""
    cell = cells.get(column)
    if not cell:
        return None
    try:
        return kind(cell)
    except ValueError:
        raise ValueError(f"{where}: {column} {cell!r} is not {expected}") from None


def check_prompt(prompt: str, where: str) -> None:
    """Raise ValueError("WHERE: ...") for prompt text the server would refuse (blank, too long, control characters)."""
    if not prompt.strip():
        raise ValueError(f"{where}: empty prompt; describe the motion in 1-{MAX_PROMPT_CHARS} characters")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"{where}: prompt has {len(prompt)} characters; shorten it to at most {MAX_PROMPT_CHARS}")
    for position, char in enumerate(prompt):
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(f"{where}: prompt has a control character (U+{ord(char):04X}) at position "
                             f"{position + 1}; use plain text")


def _check(prompt: str, seconds: float | None, seed: int | None, source: str, line: int) -> None:
    """Raise ValueError("SOURCE:LINE: ...") for a prompt the server would refuse."""
    where = f"{source}:{line}"
    check_prompt(prompt, where)
    low, high = SECONDS_RANGE
    if seconds is not None and not (math.isfinite(seconds) and low <= seconds <= high):
        raise ValueError(f"{where}: seconds is {seconds:g}; allowed range is {low}-{high} (or leave it empty)")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{where}: seed is {seed}; allowed range is 0-{MAX_SEED} (or leave it empty)")


def _finish(rows: list[tuple], source: str) -> list[BatchPrompt]:
    """BatchPrompts from (line, prompt, seconds, seed, name) rows: validated, named uniquely."""
    if not rows:
        raise ValueError(f"{source}:1: no prompts; write one prompt per line (lines starting with # are skipped)")
    for line, prompt, seconds, seed, _ in rows:
        _check(prompt, seconds, seed, source, line)
    names = unique_names([slug(name if name else prompt) for _, prompt, _, _, name in rows])
    return [BatchPrompt(prompt=prompt, seconds=seconds, seed=seed, name=name, line=line)
            for (line, prompt, seconds, seed, _), name in zip(rows, names)]
