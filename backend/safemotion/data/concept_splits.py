"""Forget/retain split files for a concept, in the Human Motion Unlearning benchmark format.

For each standard split (`train`, `val`, `test`, `train_val`) of a HumanML3D-layout dataset, writes
`kw_splits/<rule>/<split>-w-<concept>.txt` (forget: ids with >= 1 matching caption line) and
`kw_splits/<rule>/<split>-wo-<concept>.txt` (retain), one id per line, no header. The rule gets its own folder so
both rules can coexist; copy or point the benchmark's `kw_splits` path at `kw_splits/paper` to reproduce the paper.

What is matched: the `paper` rule tests the **whole** caption line (caption#tokens#start#end), exactly what the
benchmark's `grep -Ec` sees (so a lemma in the token field can match); `word_boundary` tests only the caption text,
because the `word/POS` field would defeat its false-friend phrases ("kick/VERB a/DET ball/NOUN").
"""

from __future__ import annotations

from pathlib import Path

from safemotion.atomic_dir import write_text_atomic
from safemotion.data.concepts import DEFAULT_RULE, load_concept

SPLITS = ("train", "val", "test", "train_val")
MIN_MATCHING_LINES = 1


def read_ids(path: Path) -> list[str]:
    """Ids of a split file (one per line, blank lines ignored)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found; build the dataset first (safemotion data build)")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def is_forget(text_file: Path, concept: str, rule: str) -> bool:
    """True when at least MIN_MATCHING_LINES caption lines of a texts/<id>.txt file match the concept."""
    if not text_file.is_file():
        raise FileNotFoundError(f"{text_file}: caption file missing for an id listed in a split file")
    matcher = load_concept(concept, rule)
    matching = 0
    for line in text_file.read_text(encoding="utf-8").splitlines():
        text = line if rule == "paper" else line.split("#", 1)[0]
        matching += matcher.matches(text)
    return matching >= MIN_MATCHING_LINES


def write_concept_splits(dataset_dir: Path, concept: str = "violence", rule: str = DEFAULT_RULE) -> dict[str, int]:
    """Write forget/retain id files for every split; returns id counts keyed by file stem (e.g. 'test-w-violence')."""
    dataset_dir = Path(dataset_dir)
    load_concept(concept, rule)  # fail on an unknown concept/rule before touching any file
    split_ids = {split: read_ids(dataset_dir / f"{split}.txt") for split in SPLITS}
    forget_cache: dict[str, bool] = {}
    files: dict[str, list[str]] = {}
    for split, ids in split_ids.items():
        for motion_id in ids:
            if motion_id not in forget_cache:
                forget_cache[motion_id] = is_forget(dataset_dir / "texts" / f"{motion_id}.txt", concept, rule)
        files[f"{split}-w-{concept}"] = [i for i in ids if forget_cache[i]]
        files[f"{split}-wo-{concept}"] = [i for i in ids if not forget_cache[i]]
    out_dir = dataset_dir / "kw_splits" / rule
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in files.items():
        write_text_atomic(out_dir / f"{name}.txt", "".join(f"{line}\n" for line in ids))
    return {name: len(ids) for name, ids in files.items()}
