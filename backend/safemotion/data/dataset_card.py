"""The README.md written into a built dataset: clips per split, source and concept, labels and caption statistics.

Counts are windows (clips) without mirrors; every window also has a mirrored id, so id counts are twice these.
A window belongs to a concept when a caption of its take matches the concept's rule (the take labels "violence" for
word_boundary and "violence:paper" for the paper rule), which is what `safemotion data split` writes per id.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safemotion.data.dataset_builder import DatasetStats

CONCEPT_LABELS = {"violence": "violence (word_boundary)", "violence:paper": "violence (paper rule)"}
SPLIT_NAMES = ("train", "val", "test")
_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")


def caption_statistics(captions_per_window: list[tuple[str, ...]]) -> dict[str, float]:
    """Caption count, distinct captions per window (min / mean / max) and vocabulary size (lower-case words)."""
    distinct = [len({c.strip().lower() for c in captions}) for captions in captions_per_window]
    vocabulary = {
        word for captions in captions_per_window for caption in captions for word in _WORD_RE.findall(caption.lower())
    }
    return {
        "captions": sum(distinct),
        "distinct_per_window_min": min(distinct, default=0),
        "distinct_per_window_mean": round(sum(distinct) / max(len(distinct), 1), 3),
        "distinct_per_window_max": max(distinct, default=0),
        "windows_with_3_or_more": sum(d >= 3 for d in distinct),
        "vocabulary": len(vocabulary),
    }


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |" for row in rows]
    return lines


def render_dataset_card(stats: DatasetStats) -> str:
    """Markdown README for a built dataset from its statistics."""
    def per_split(table: dict[str, dict[str, int]], key: str) -> tuple[int, ...]:
        counts = tuple(table.get(split, {}).get(key, 0) for split in SPLIT_NAMES)
        return (*counts, sum(counts))

    sources = sorted({source for counts in stats.per_split_source.values() for source in counts})
    lines = [
        "# SafeMotion dataset",
        "",
        f"{stats.clips:,} takes, {stats.windows:,} windows (clips; {stats.ids:,} ids with mirrors), "
        f"{stats.hours:.2f} h at 20 fps, split seed {stats.seed}. Built by `safemotion data build`; layout as "
        "HumanML3D (`new_joint_vecs/`, `new_joints/`, `texts/`, split files, `Mean.npy`, `Std.npy`). Counts below are "
        "windows without mirrors; each has a mirrored id (`M<id>`) in the same split.",
        "",
        "## Clips per split and source",
        "",
        *_table(("source", *SPLIT_NAMES, "all"), [(s, *per_split(stats.per_split_source, s)) for s in sources]),
        "",
        "## Clips per split and concept",
        "",
        "Forget set = windows with a caption matching the concept; `safemotion data split` writes the id lists.",
        "",
        *_table(("concept", *SPLIT_NAMES, "all"),
                [(name, *per_split(stats.per_split_concept, label)) for label, name in CONCEPT_LABELS.items()]),
        "",
        "## Labels (windows)",
        "",
        *_table(("label", "windows"), sorted(stats.per_label.items())),
        "",
        "## Captions",
        "",
        *_table(("statistic", "value"), list(stats.caption_stats.items())),
        "",
    ]
    if stats.skipped:
        lines += ["## Skipped takes", "", *_table(("take", "reason"), sorted(stats.skipped.items())), ""]
    return "\n".join(lines)
