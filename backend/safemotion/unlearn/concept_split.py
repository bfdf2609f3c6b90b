"""The forget/retain id lists an unlearning method reads: `kw_splits/<rule>/<split>-w-<concept>.txt` (forget) and
`<split>-wo-<concept>.txt` (retain), written by `safemotion data split` (safemotion.data.concept_splits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safemotion.data.concept_splits import read_ids
from safemotion.data.concepts import DEFAULT_RULE, load_concept
from safemotion.unlearn.record import file_sha256


@dataclass(frozen=True)
class ConceptSplit:
    """Forget and retain clip ids of one split of a dataset for a concept."""

    dataset: Path
    concept: str
    rule: str
    split: str
    forget_file: Path
    retain_file: Path
    forget_ids: frozenset[str]
    retain_ids: frozenset[str]

    def split_name(self, role: str) -> str:
        """Split-file path relative to the dataset without '.txt' (what `safemotion train --split` takes)."""
        file = self.forget_file if role == "forget" else self.retain_file
        return file.relative_to(self.dataset).with_suffix("").as_posix()

    def provenance(self) -> dict[str, dict[str, Any]]:
        """Per role: the file path relative to the dataset, its SHA-256 and its number of ids."""
        return {
            role: {"path": file.relative_to(self.dataset).as_posix(), "sha256": file_sha256(file), "ids": len(ids)}
            for role, file, ids in (("forget", self.forget_file, self.forget_ids),
                                    ("retain", self.retain_file, self.retain_ids))
        }


def split_files(dataset: str | Path, concept: str, rule: str = DEFAULT_RULE,
                split: str = "train_val") -> tuple[Path, Path]:
    """Paths of the forget and retain id files of `split` for `concept` under `rule`."""
    folder = Path(dataset) / "kw_splits" / rule
    return folder / f"{split}-w-{concept}.txt", folder / f"{split}-wo-{concept}.txt"


def load_concept_split(dataset: str | Path, concept: str, rule: str = DEFAULT_RULE,
                       split: str = "train_val") -> ConceptSplit:
    """Read and check the forget/retain ids; unknown concepts, missing, empty or overlapping lists raise."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise FileNotFoundError(f"{dataset}: dataset folder not found")
    load_concept(concept, rule)  # ValueError listing the known concepts
    forget_file, retain_file = split_files(dataset, concept, rule, split)
    for file in (forget_file, retain_file):
        if not file.is_file():
            raise FileNotFoundError(f"{file}: split file not found; write it with `safemotion data split --data "
                                    f"{dataset} --concept {concept} --rule {rule}`")
    forget, retain = frozenset(read_ids(forget_file)), frozenset(read_ids(retain_file))
    for role, file, ids in (("forget", forget_file, forget), ("retain", retain_file, retain)):
        if not ids:
            raise ValueError(f"{file}: the {role} split is empty; unlearning '{concept}' needs clips on both sides "
                             "(check the concept and rule, or the dataset's captions)")
    both = sorted(forget & retain)
    if both:
        raise ValueError(f"{forget_file} and {retain_file} share {len(both)} ids (e.g. {both[0]}); rewrite them with "
                         "`safemotion data split`")
    return ConceptSplit(dataset, concept, rule, split, forget_file, retain_file, forget, retain)
