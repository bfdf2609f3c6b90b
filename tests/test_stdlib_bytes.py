"""Byte-level LM corpus from the stdlib sources: fixed disjoint splits, windows, and bits per byte on real models."""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest

from safemotion.data.stdlib_bytes import (
    RECORDED_FINGERPRINTS,
    SPLITS,
    bits_per_byte,
    corpus_fingerprint,
    eval_windows,
    load_split,
    sample_windows,
    to_ids,
)


def test_splits_are_disjoint_by_file_and_load_from_this_interpreter():
    names = [name for files in SPLITS.values() for name in files]
    assert len(names) == len(set(names))
    fingerprint = corpus_fingerprint()
    assert fingerprint["train"]["bytes"] > 5 * fingerprint["test"]["bytes"] > 5 * 100_000
    assert load_split("test") == load_split("test")  # same bytes on every read
    assert load_split("validation").startswith(b'"""\nPython implementation of the io module.')


def test_corpus_matches_the_fingerprint_recorded_for_this_python_version():
    version = platform.python_version()
    if version not in RECORDED_FINGERPRINTS:
        pytest.skip(f"no corpus fingerprint recorded for Python {version}")
    measured = {split: (entry["bytes"], entry["sha256"]) for split, entry in corpus_fingerprint().items()}
    assert measured == RECORDED_FINGERPRINTS[version]


def test_missing_files_and_bad_splits_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing under"):
        load_split("test", root=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("dev")


def test_windows_and_bits_per_byte_of_uniform_and_unigram_models():
    train, test = to_ids(load_split("train")), to_ids(load_split("test"))
    windows = sample_windows(train, 64, 10, np.random.default_rng(0))
    assert windows.shape == (10, 65) and windows.max() < 256
    assert np.array_equal(windows, sample_windows(train, 64, 10, np.random.default_rng(0)))
    evaluation = eval_windows(test, 1024)
    assert evaluation.shape == ((len(test) - 1) // 1024, 1025)
    assert np.array_equal(evaluation[1, :-1], test[1024:2048])  # consecutive, each target overlaps the next input
    # A uniform predictor costs exactly 8 bits per byte.
    assert math.isclose(bits_per_byte(len(test) * math.log(256), len(test)), 8.0)
    # A unigram model fitted on train (add-one smoothing) predicts test bytes at well under 8 bits: Python source is
    # mostly lower-case ASCII and spaces.
    counts = np.bincount(train, minlength=256) + 1.0
    log_p = np.log(counts / counts.sum())
    unigram = bits_per_byte(float(-log_p[test].sum()), len(test))
    assert 4.0 < unigram < 5.5, unigram
