"""Joint-velocity jumps of a motion and at the seams of an edited take (issue 18's continuity measure).

The velocity jump at frame t is max_j ‖(x[t+1] − x[t]) − (x[t] − x[t−1])‖ (metres per frame, per frame). A seam's
jump is the largest one over the frames whose stencil touches a switch of what the frames are made of: kept →
cross-faded at f0 − blend, cross-faded → generated at f0, and back at f1 and f1 + blend, for a region [f0, f1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def velocity_jumps(joints: np.ndarray) -> np.ndarray:
    """(T − 2,) joint-velocity jump at frames 1..T−2: the largest change of a joint's per-frame velocity, metres."""
    accel = joints[2:] - 2 * joints[1:-1] + joints[:-2]
    return np.linalg.norm(accel, axis=-1).max(axis=-1)


def seam_pairs(joints: np.ndarray, regions: list[tuple[int, int]],
               blend: int) -> list[tuple[float | None, float | None]]:
    """(jump at the start seam, at the end seam) of each region [f0, f1) of frames, from one pass of velocity_jumps
    over the motion; None where a region touches the take's first or last frame and so has no seam there."""
    jumps = velocity_jumps(np.asarray(joints, dtype=np.float64))  # jumps[i] is at frame i + 1
    frames = len(joints)

    def at(switches: tuple[int, int]) -> float:
        stencil = [t for s in switches for t in (s - 1, s) if 1 <= t <= frames - 2]
        return float(jumps[np.array(stencil) - 1].max())

    return [(at((f0 - blend, f0)) if f0 > 0 else None, at((f1, f1 + blend)) if f1 < frames else None)
            for f0, f1 in regions]


def seam_jumps(joints: np.ndarray, regions: list[tuple[int, int]], blend: int) -> list[float]:
    """The largest velocity jump at each seam of every region [f0, f1) (frames): the start seams of the regions, then
    their end seams. A region at the start or end of the take has one seam."""
    pairs = seam_pairs(joints, regions, blend)
    return [p[0] for p in pairs if p[0] is not None] + [p[1] for p in pairs if p[1] is not None]


@dataclass(frozen=True)
class SeamReport:
    """An edited take's seams after re-sampling: the frame of each (where regenerated frames meet kept ones, the
    blend window lying on the kept side) and its velocity jump, against the limit the edit re-sampled for."""

    limit: float  # metres per frame²
    tries: int  # re-sampling tries made at the seams over the limit (0: none was needed or allowed)
    frames: tuple[int, ...]
    jumps: tuple[float, ...]

    @classmethod
    def of(cls, pairs: list[tuple[float | None, float | None]], regions: list[tuple[int, int]], limit: float,
           tries: int) -> SeamReport:
        """The report of seam_pairs measured on regions [f0, f1) of frames."""
        seams = [(f, jump) for (f0, f1), pair in zip(regions, pairs) for f, jump in zip((f0, f1), pair)
                 if jump is not None]
        return cls(limit, tries, tuple(f for f, _ in seams), tuple(jump for _, jump in seams))

    def warnings(self) -> list[str]:
        """One sentence per seam still over the limit (its frame, its jump and the limit); empty when all hold."""
        return [f"the seam at frame {frame} jumps {jump:.3f} m/frame², over the limit of {self.limit:.3g} "
                f"(still over after {self.tries} re-sampling tries); check the motion there or edit it again with "
                "another seed" for frame, jump in zip(self.frames, self.jumps) if jump > self.limit]

    def to_dict(self) -> dict:
        """JSON-ready dictionary (with the warnings)."""
        return {"limit_m": self.limit, "tries": self.tries,
                "seams": [{"frame": f, "jump_m": j} for f, j in zip(self.frames, self.jumps)],
                "warnings": self.warnings()}
