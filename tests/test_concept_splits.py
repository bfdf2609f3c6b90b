"""Forget/retain split files: benchmark file format, both rules, grep equivalence of the paper rule."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from safemotion.data.captions import caption_line
from safemotion.data.concept_splits import SPLITS, write_concept_splits

CAPTIONS = {
    "000001": ["a person walks forward", "someone strolls"],
    "000002": ["a person punches the air", "someone waves"],  # violent under both rules
    "000003": ["Kicks with the left leg"],  # paper: only via the lemma 'kick' in the token field
    "000004": ["a person kicks a ball"],  # paper yes, word_boundary no (false friend)
    "000005": ["a person in a white shirt jumps"],  # paper yes ('hit' in 'white'), word_boundary no
    "000006": ["a person stabs with a knife"],  # word_boundary only
}
SPLIT_IDS = {"train": ["000001", "000002", "000003"], "val": ["000004"], "test": ["000005", "000006"]}


def _make_dataset(root: Path) -> Path:
    (root / "texts").mkdir(parents=True)
    for motion_id, captions in CAPTIONS.items():
        for prefix in ("", "M"):
            lines = [caption_line(c) for c in captions]
            (root / "texts" / f"{prefix}{motion_id}.txt").write_text("\n".join(lines) + "\n")
    split_ids = {name: [p + i for i in ids for p in ("", "M")] for name, ids in SPLIT_IDS.items()}
    split_ids["train_val"] = split_ids["train"] + split_ids["val"]
    for name, ids in split_ids.items():
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def _read(path: Path) -> list[str]:
    return path.read_text().split()


def test_paper_rule_files_and_counts(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    counts = write_concept_splits(root, "violence", "paper")
    out = root / "kw_splits" / "paper"
    assert _read(out / "train-w-violence.txt") == ["000002", "M000002", "000003", "M000003"]
    assert _read(out / "train-wo-violence.txt") == ["000001", "M000001"]
    assert _read(out / "val-w-violence.txt") == ["000004", "M000004"]
    assert _read(out / "test-w-violence.txt") == ["000005", "M000005"]
    assert _read(out / "test-wo-violence.txt") == ["000006", "M000006"]
    assert _read(out / "train_val-w-violence.txt") == ["000002", "M000002", "000003", "M000003", "000004", "M000004"]
    assert counts == {
        "train-w-violence": 4, "train-wo-violence": 2, "val-w-violence": 2, "val-wo-violence": 0,
        "test-w-violence": 2, "test-wo-violence": 2, "train_val-w-violence": 6, "train_val-wo-violence": 2,
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}-{w}-violence.txt" for s in SPLITS for w in ("w", "wo")
    )  # no temporary files left


def test_word_boundary_rule(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    counts = write_concept_splits(root, "violence", "word_boundary")
    out = root / "kw_splits" / "word_boundary"
    assert _read(out / "train-w-violence.txt") == ["000002", "M000002", "000003", "M000003"]
    assert _read(out / "val-w-violence.txt") == []
    assert _read(out / "val-wo-violence.txt") == ["000004", "M000004"]
    assert _read(out / "test-w-violence.txt") == ["000006", "M000006"]
    assert counts["test-wo-violence"] == 2 and counts["train_val-w-violence"] == 4


@pytest.mark.skipif(shutil.which("grep") is None, reason="grep not installed")
def test_paper_rule_equals_benchmark_grep(tmp_path):
    """The benchmark's scripts/utils/split_dataset.sh: grep -Ec 'kw1|kw2|...' texts/<id>.txt >= 1 -> forget."""
    root = _make_dataset(tmp_path / "ds")
    write_concept_splits(root, "violence", "paper")
    pattern = "kick|punch|hit|beat|boxe|boxing|jab|uppercut|hook"
    for split in SPLITS:
        expected = []
        for motion_id in _read(root / f"{split}.txt"):
            run = subprocess.run(["grep", "-Ec", pattern, root / "texts" / f"{motion_id}.txt"], capture_output=True)
            if int(run.stdout) >= 1:
                expected.append(motion_id)
        assert _read(root / "kw_splits" / "paper" / f"{split}-w-violence.txt") == expected


def test_errors_leave_no_files(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match="unknown concept 'gore'"):
        write_concept_splits(root, "gore", "paper")
    assert not (root / "kw_splits").exists()
    (root / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt: split file not found"):
        write_concept_splits(root, "violence", "paper")
    assert not (root / "kw_splits").exists()
    (root / "val.txt").write_text("000099\n")
    with pytest.raises(FileNotFoundError, match="000099.txt: caption file missing"):
        write_concept_splits(root, "violence", "paper")
    assert not (root / "kw_splits").exists()  # all ids are checked before any file is written
