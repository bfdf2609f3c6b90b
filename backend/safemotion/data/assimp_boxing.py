"""assimp's Boxing_Toes.bvh (`shared/data/assimp_boxing/`): one boxing take cut into its captioned segments.

The take starts with 1.5 s of standing and a T-pose calibration, which no segment may include. The file declares
3,069 frames but holds 3,070 frame lines; the surplus last line is ignored (`read_bvh(extra_frames="ignore")`).
The BVH itself (cm, Y up, ZXY channels) goes through `mocap_import.load_motion` with the `ab_chest` joint map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safemotion.data.tsv_table import read_tsv

TAKE_FILE = "Boxing_Toes.bvh"
CALIBRATION_SECONDS = 1.5  # standing + T-pose at the start of the take


@dataclass(frozen=True)
class BoxingSegment:
    """One captioned stretch of the take, in seconds of the source file."""

    index: int
    start_s: float
    end_s: float
    captions: tuple[str, ...]

    @property
    def name(self) -> str:
        """Take name used in the dataset index, e.g. `Boxing_Toes@1.5-8.5`."""
        return f"{Path(TAKE_FILE).stem}@{self.start_s:g}-{self.end_s:g}"


def read_segments(folder: str | os.PathLike) -> list[BoxingSegment]:
    """The segments of `captions.tsv` (columns segment, start_s, end_s, caption) in segment order."""
    table = Path(folder) / "captions.tsv"
    spans: dict[int, tuple[float, float]] = {}
    captions: dict[int, list[str]] = {}
    for line, row in read_tsv(table, {"segment", "start_s", "end_s", "caption"}):
        try:
            index, span = int(row["segment"]), (float(row["start_s"]), float(row["end_s"]))
        except ValueError:
            raise ValueError(f"{table}:{line}: segment must be an integer and start_s/end_s numbers") from None
        if span[0] < CALIBRATION_SECONDS or span[1] <= span[0]:
            raise ValueError(f"{table}:{line}: segment {index} spans {span[0]}-{span[1]} s; it must end after it "
                             f"starts and start after the T-pose calibration ({CALIBRATION_SECONDS} s)")
        if spans.setdefault(index, span) != span:
            raise ValueError(f"{table}:{line}: segment {index} has two different time spans")
        captions.setdefault(index, []).append(row["caption"].strip())
    return [BoxingSegment(i, *spans[i], tuple(captions[i])) for i in sorted(spans)]
