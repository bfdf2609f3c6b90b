"""Checks of edited takes (issue 18): seam continuity against real clips, and the adherence of edits on a real model.

Seam continuity: the joint-velocity jump at frame t is max_j ‖(x[t+1] − x[t]) − (x[t] − x[t−1])‖ (metres per frame,
per frame); a seam's jump is the largest one over the frames whose stencil touches its blend window or the region
boundary. The bound is the 95th percentile of the same quantity over every frame of the real clips of a dataset split.

    bound = velocity_jump_bound(Path("datasets/safemotion-v1"), "test")
    results = run_edit_suite(Editor(SafeGenerator.from_dir()), seeds=range(10), bound=bound)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from safemotion.edit import Editor, SourceMotion, source_from_features, token_regions
from safemotion.eval.adherence import UP, CheckResult, J, horizontal
from safemotion.generate import GenerationRequest

WALK = "a person walks forward"
WAVE = "a person waves with the right hand"
JUMP_SPAN_S = (2.0, 4.0)  # the middle 2 s of a 6 s walk
MIN_JUMP_M = 0.15
MIN_WALK_SPEED_MPS = 0.5  # "walking outside the span": the pelvis keeps moving at least this fast there
MIN_SIT_DROP_M = 0.15  # "ends lower than it started": pelvis at the end at least this much below its start


def velocity_jumps(joints: np.ndarray) -> np.ndarray:
    """(T − 2,) joint-velocity jump at frames 1..T−2: the largest change of a joint's per-frame velocity, metres."""
    accel = joints[2:] - 2 * joints[1:-1] + joints[:-2]
    return np.linalg.norm(accel, axis=-1).max(axis=-1)


def velocity_jump_bound(data: Path, split: str = "test", percentile: float = 95.0) -> tuple[float, int, int]:
    """(percentile of the velocity jumps over every frame of the split's real clips, clips, frames)."""
    names = (Path(data) / f"{split}.txt").read_text().split()
    jumps = [velocity_jumps(np.load(Path(data) / "new_joints" / f"{name}.npy").astype(np.float64))
             for name in names if (Path(data) / "new_joints" / f"{name}.npy").is_file()]
    if not jumps:
        raise ValueError(f"{data}: no clip of the {split} split found under new_joints/")
    values = np.concatenate(jumps)
    return float(np.percentile(values, percentile)), len(jumps), int(values.size)


def seam_jumps(joints: np.ndarray, regions: list[tuple[int, int]], blend: int) -> list[float]:
    """The largest velocity jump around each seam: frames [f0 − blend − 1, f0 + 1] and [f1 − 1, f1 + blend + 1] of
    every region [f0, f1) (frames), where the result passes from kept to blended to generated frames."""
    jumps = velocity_jumps(joints.astype(np.float64))  # jumps[i] is at frame i + 1
    frames = len(joints)
    windows = [(f0 - blend - 1, f0 + 1) for f0, _ in regions if f0 > 0]
    windows += [(f1 - 1, f1 + blend + 1) for _, f1 in regions if f1 < frames]
    return [float(jumps[max(lo, 1) - 1:min(hi, frames - 2)].max()) for lo, hi in windows]


def pelvis_lift(joints: np.ndarray, start: int, end: int) -> float:
    """Highest pelvis height in frames [start, end) above its height on the first frame of the take, metres."""
    return float(joints[start:end, J["pelvis"], UP].max() - joints[0, J["pelvis"], UP])


def pelvis_speed(joints: np.ndarray, fps: float) -> float:
    """Mean horizontal pelvis speed (path length over duration), m/s."""
    steps = np.diff(horizontal(joints[:, J["pelvis"]]), axis=0)
    return float(np.linalg.norm(steps, axis=-1).sum() * fps / max(len(joints) - 1, 1))


@dataclass
class EditSuite:
    """Results of the edit checks and the seam jumps measured on the way."""

    checks: list[CheckResult]
    seam_jumps: dict[str, list[float]] = field(default_factory=dict)
    bound: float | None = None


def run_edit_suite(editor: Editor, seeds=range(10), bound: float | None = None) -> EditSuite:
    """Jump in the middle of a walk, sit after a walk, in-between of a walk and a wave; one source per seed."""
    seeds = list(seeds)
    safe = editor.safe
    fps = editor.fps
    sources = {}
    for prompt, seconds in ((WALK, 6.0), (WAVE, 3.0)):
        motions = safe.generator.generate([GenerationRequest(prompt, seconds, seed) for seed in seeds], smpl=False)
        sources[prompt] = [source_from_features(m.features, m.fps, f"{prompt!r} seed {m.seed}") for m in motions]
    f0, f1 = (round(s * fps) for s in JUMP_SPAN_S)
    blend, unit = editor.settings.blend_frames, editor.unit
    jump = CheckResult("jump in the middle 2 s of a 6 s walk", ("a person jumps",))
    sit = CheckResult("extending a walk with 'then sits down' ends lower", ("then sits down",))
    between = CheckResult("in-between of a walk and a wave: seams within the bound", ("a person walks and stops",))
    jumps: dict[str, list[float]] = {"edit": [], "extend": [], "inbetween": []}
    for index, seed in enumerate(seeds):
        walk: SourceMotion = sources[WALK][index]
        edited = editor.edit(walk, [(f0, f1)], "a person jumps", seed=seed, smpl=False)[0]
        joints = edited.motion.joints
        regions = [(t0 * unit, t1 * unit) for t0, t1 in token_regions([(f0, f1)], len(joints) // unit, unit,
                                                                       editor.settings.margin_tokens)]
        lift = pelvis_lift(joints, f0, f1)
        outside = min(pelvis_speed(joints[:regions[0][0] - blend], fps),
                      pelvis_speed(joints[regions[0][1] + blend:], fps))
        seams = seam_jumps(joints, regions, blend)
        jumps["edit"] += seams
        jump.passed.append(lift >= MIN_JUMP_M and outside >= MIN_WALK_SPEED_MPS)
        jump.measured.append({"pelvis_lift_m": lift, "walk_speed_outside_mps": outside, "seam_jump_m": max(seams)})

        extended = editor.extend(walk, 2.0, "then sits down", seed=seed, smpl=False)[0].motion.joints
        drop = float(extended[0, J["pelvis"], UP] - extended[-1, J["pelvis"], UP])
        start = len(walk.joints) // unit * unit
        seams = seam_jumps(extended, [(start, len(extended))], blend)
        jumps["extend"] += seams
        sit.passed.append(drop >= MIN_SIT_DROP_M)
        sit.measured.append({"pelvis_drop_m": drop, "seam_jump_m": max(seams)})

        wave = sources[WAVE][index]
        combined = editor.inbetween(walk, wave, 1.5, "a person walks and stops", seed=seed, smpl=False)[0]
        joints = combined.motion.joints
        middle = (start, start + round(1.5 * fps) // unit * unit)
        seams = seam_jumps(joints, [middle], blend)
        jumps["inbetween"] += seams
        root, feet = _part_jumps(joints, [middle], blend)
        between.passed.append(bound is None or max(root, feet) <= bound)
        between.measured.append({"root_jump_m": root, "foot_jump_m": feet, "seam_jump_m": max(seams)})
    return EditSuite([jump, sit, between], jumps, bound)


def _part_jumps(joints: np.ndarray, regions: list[tuple[int, int]], blend: int) -> tuple[float, float]:
    """The largest velocity jump of the root and of the four foot joints around the seams."""
    root = seam_jumps(joints[:, [J["pelvis"]]], regions, blend)
    feet = seam_jumps(joints[:, [J["left_ankle"], J["left_foot"], J["right_ankle"], J["right_foot"]]], regions, blend)
    return max(root), max(feet)
