"""Byte-level language-modelling corpus every machine has: the Python standard library's own source files.

A fixed list of modules, split by file (no file is in two splits) into train / validation / test. The files are read
from the running interpreter's stdlib directory (`sysconfig.get_path("stdlib")`), so the bytes depend on the Python
version: record `corpus_fingerprint` with any result. The list avoids modules removed or turned into packages up to
Python 3.13 (asyncore, cgi, smtpd, telnetlib, datetime → _pydatetime, pathlib and zipfile → packages, ...).
Reproducibility: machines with the same CPython minor version (say 3.11.x) read the same files, wherever Python is
installed, and get the same bytes unless a patch release (or a distribution's patch) edited one of them; the
fingerprint's sha256 per split shows which case holds. Other minor versions give a different, similar-sized corpus.

Sizes on CPython 3.11.7: train 2,840,740 bytes (58 files), validation 252,556 (4), test 254,216 (5); a unigram byte
model fitted on train scores 4.48 bits per byte on test (uniform: 8).
Tokens are the 256 byte values; the metric is bits per byte = mean cross-entropy (nats) / ln 2 over predicted bytes.
"""

from __future__ import annotations

import hashlib
import math
import sys
import sysconfig
from pathlib import Path

import numpy as np

VOCAB_SIZE = 256

SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "argparse.py", "ast.py", "bdb.py", "calendar.py", "codecs.py", "collections/__init__.py", "configparser.py",
        "contextlib.py", "csv.py", "dataclasses.py", "difflib.py", "doctest.py", "enum.py", "fractions.py",
        "ftplib.py", "functools.py", "gettext.py", "gzip.py", "heapq.py", "imaplib.py", "inspect.py", "ipaddress.py",
        "locale.py", "logging/__init__.py", "mailbox.py", "ntpath.py", "optparse.py", "os.py", "pdb.py", "pickle.py",
        "pickletools.py", "platform.py", "posixpath.py", "pprint.py", "profile.py", "pstats.py", "random.py",
        "selectors.py", "shutil.py", "smtplib.py", "socket.py", "socketserver.py", "ssl.py", "statistics.py",
        "subprocess.py", "tarfile.py", "tempfile.py", "textwrap.py", "threading.py", "tokenize.py", "trace.py",
        "traceback.py", "typing.py", "uuid.py", "warnings.py", "weakref.py", "zipimport.py", "fileinput.py",
    ),
    "validation": ("_pyio.py", "pydoc.py", "plistlib.py", "base64.py"),
    "test": ("turtle.py", "email/message.py", "json/__init__.py", "mimetypes.py", "webbrowser.py"),
}


def stdlib_dir() -> Path:
    """The running interpreter's standard-library source directory."""
    return Path(sysconfig.get_path("stdlib"))


def load_split(split: str, root: Path | None = None) -> bytes:
    """The split's files, read in list order and joined by one newline byte."""
    if split not in SPLITS:
        raise ValueError(f"stdlib_bytes: split must be one of {sorted(SPLITS)}, got {split!r}")
    root = stdlib_dir() if root is None else root
    missing = [name for name in SPLITS[split] if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"stdlib_bytes: {len(missing)} file(s) of the {split} split are missing under {root} "
            f"(Python {sys.version.split()[0]}): {missing[:5]}; the list targets CPython 3.10-3.13 source installs"
        )
    return b"\n".join((root / name).read_bytes() for name in SPLITS[split])


def corpus_fingerprint(root: Path | None = None) -> dict[str, dict[str, object]]:
    """Per split: byte count, file count and sha256, to pin the exact corpus a result was measured on."""
    out = {}
    for split in SPLITS:
        data = load_split(split, root)
        out[split] = {"bytes": len(data), "files": len(SPLITS[split]), "sha256": hashlib.sha256(data).hexdigest()}
    return out


def to_ids(data: bytes) -> np.ndarray:
    """Byte values as int64 token ids."""
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def sample_windows(ids: np.ndarray, length: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random windows of length + 1 bytes (inputs = [:-1], targets = [1:]) as (count, length + 1)."""
    if len(ids) <= length + 1:
        raise ValueError(f"stdlib_bytes: corpus of {len(ids)} bytes is too short for windows of {length + 1}")
    starts = rng.integers(0, len(ids) - length - 1, size=count)
    return np.stack([ids[s : s + length + 1] for s in starts])


def eval_windows(ids: np.ndarray, length: int) -> np.ndarray:
    """Consecutive non-overlapping windows of length + 1 bytes covering the corpus (the tail shorter than one dropped)."""
    count = (len(ids) - 1) // length
    if count < 1:
        raise ValueError(f"stdlib_bytes: corpus of {len(ids)} bytes is too short for windows of {length + 1}")
    return np.stack([ids[i * length : i * length + length + 1] for i in range(count)])


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Summed cross-entropy in nats over n_bytes predicted bytes -> bits per byte."""
    if n_bytes < 1:
        raise ValueError("bits_per_byte: need at least one predicted byte")
    return total_nats / n_bytes / math.log(2)
