"""Byte-level language-modelling corpus every machine has: the Python standard library's own source files.

A fixed list of modules, split by file (no file is in two splits) into train / validation / test. The files are read
from the running interpreter's stdlib directory (`sysconfig.get_path("stdlib")`), so the bytes depend on the Python
build: record `corpus_fingerprint` with any result. The list avoids modules removed or turned into packages up to
Python 3.13 (asyncore, cgi, smtpd, telnetlib, datetime → _pydatetime, pathlib and zipfile → packages, ...).
Reproducibility: the corpus is exactly the bytes of those files, so two machines get the same corpus when their
fingerprints match, and only then. Patch releases do change it: Debian's CPython 3.11.2 and pyenv's 3.11.7 differ in
35 of the 67 files (train 2,826,775 against 2,840,740 bytes). `RECORDED_FINGERPRINTS` holds the fingerprints measured
for five interpreters; a test checks the running interpreter against the entry for its exact version.

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


# corpus_fingerprint as measured (bytes, sha256 per split): pyenv builds of 3.10.13, 3.11.7 (this project's venv),
# 3.12.1 and 3.13.0, and Debian 12's /usr/lib/python3.11 (3.11.2).
RECORDED_FINGERPRINTS: dict[str, dict[str, tuple[int, str]]] = {
    "3.10.13": {
        "train": (2736804, "ffae5df24749fdbb0e4a2e9178f819265a7f7d72845655c4d8da844019005e82"),
        "validation": (253258, "e57b2f45b94e34abe3ca5a7d2f96511ed1adce03e77c9729be53ecaeb79e0143"),
        "test": (251628, "fc4967b0112ed3448246b1bc1311b4642a5f2eea0e1d6e9eee70b0c951569006"),
    },
    "3.11.2": {
        "train": (2826775, "4e3010056d059a01b9cc0a64c9040a3b0b14510aaee55e82e203466f03c94674"),
        "validation": (252445, "f81fcc46c176d038bcae8d8570eff59cc45e6674baa0e47985e902e12e0e9f2e"),
        "test": (254214, "3249d57c0e08b697fb9d1febbb42c59d2169b897460d3635297d1fdf96527cdb"),
    },
    "3.11.7": {
        "train": (2840740, "3361079d7582441b96b0ffd2ca18735976efc31162d8cfb0ec76bb964b49e3d1"),
        "validation": (252556, "a245926d9f21c6a044a9df7f1e1f2b6167f796cd0d069711b96ec3f226bc2c1e"),
        "test": (254216, "9e6f2b24236901cf34d8c7ccd852be3887d000fef2331fdc297bbd399c1a2a24"),
    },
    "3.12.1": {
        "train": (2869206, "7bda7ece25dab23877ac8eac235b2069751c4d8ae06cc28f319bece41c6d6d24"),
        "validation": (251664, "01633f30e5d0af7193b2b412905a86f6d49db381e03a915d8f734633a3b2a0d5"),
        "test": (254716, "677d21d66344b14ef87837ab46f407a924688ccf085c41868c7163c576a60c7d"),
    },
    "3.13.0": {
        "train": (2990372, "4c13e4bf5b6063551a2de946aa8b400917715192e88ba5a2ba826b24021b57a1"),
        "validation": (254167, "04bc4c02da0c3af24e1a296db1127be63ac0de0a93bb06d86bb0fcb41c5c71be"),
        "test": (255444, "e8d1646d6953a10cb21dd3d4ed56c09ca8c2b0bad6b465f86f48a0538070568f"),
    },
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
