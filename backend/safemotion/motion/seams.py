"""Joint-velocity jumps of a motion and at the seams of an edited take (issue 18's continuity measure).

The velocity jump at frame t is max_j ‖(x[t+1] − x[t]) − (x[t] − x[t−1])‖ (metres per frame, per frame). A seam's
jump is the largest one over the frames whose stencil touches a switch of what the frames are made of: kept →
cross-faded at f0 − blend, cross-faded → generated at f0, and back at f1 and f1 + blend, for a region [f0, f1).
"""

from __future__ import annotations

import numpy as np


def velocity_jumps(joints: np.ndarray) -> np.ndarray:
    """(T − 2,) joint-velocity jump at frames 1..T−2: the largest change of a joint's per-frame velocity, metres."""
    accel = joints[2:] - 2 * joints[1:-1] + joints[:-2]
    return np.linalg.norm(accel, axis=-1).max(axis=-1)


def region_seam_jumps(joints: np.ndarray, region: tuple[int, int], blend: int) -> tuple[float | None, float | None]:
    """(jump at the region's start seam, at its end seam) for one region [f0, f1) of frames; None where the region
    touches the take's first or last frame and so has no seam there."""
    jumps = velocity_jumps(np.asarray(joints, dtype=np.float64))  # jumps[i] is at frame i + 1
    frames = len(joints)
    f0, f1 = region

    def at(switches: tuple[int, int]) -> float:
        stencil = [t for s in switches for t in (s - 1, s) if 1 <= t <= frames - 2]
        return float(jumps[np.array(stencil) - 1].max())

    return (at((f0 - blend, f0)) if f0 > 0 else None, at((f1, f1 + blend)) if f1 < frames else None)


def seam_jumps(joints: np.ndarray, regions: list[tuple[int, int]], blend: int) -> list[float]:
    """The largest velocity jump at each seam of every region [f0, f1) (frames): the start seams of the regions, then
    their end seams. A region at the start or end of the take has one seam."""
    pairs = [region_seam_jumps(joints, region, blend) for region in regions]
    return [p[0] for p in pairs if p[0] is not None] + [p[1] for p in pairs if p[1] is not None]
