"""Checks of edited takes (issue 18): seam continuity against real clips, and the adherence of edits on a real model.

Seam continuity (safemotion.motion.seams): the joint-velocity jump at frame t is max_j ‖(x[t+1] − x[t]) − (x[t] −
x[t−1])‖ (metres per frame, per frame); a seam's jump is the largest one over the frames whose stencil touches its
blend window or the region boundary. The bound is the 95th percentile of the same quantity over every frame of the
real clips of a dataset split.

    bound = velocity_jump_bound(Path("datasets/safemotion-v1"), "test")
    results = run_edit_suite(Editor(SafeGenerator.from_dir()), seeds=range(10), bound=bound)

EditSettings.seam_limit, the editor's re-sampling threshold, is the same percentile over the training split
(seam_bounds reports both, so the setting is backed by a measurement while the test split stays the check only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from safemotion.edit import EditSettings, Editor, SourceMotion, source_from_features, token_regions
from safemotion.eval.adherence import UP, CheckResult, J, speed
from safemotion.generate import GenerationRequest
from safemotion.motion.seams import seam_jumps, velocity_jumps

WALK = "a person walks forward"
JUMP_PROMPT = "a person jumps"
SIT_PROMPT = "then sits down"
BETWEEN_PROMPT = "a person walks and stops"
FEET = ("left_ankle", "left_foot", "right_ankle", "right_foot")
WAVE = "a person waves with the right hand"
JUMP_SPAN_S = (2.0, 4.0)  # the middle 2 s of a 6 s walk
MIN_JUMP_M = 0.15
MIN_WALK_SPEED_MPS = 0.5  # "walking outside the span": the pelvis keeps moving at least this fast there
MIN_SIT_DROP_M = 0.15  # "ends lower than it started": pelvis at the end at least this much below its start


def velocity_jump_bound(data: Path, split: str = "test", percentile: float = 95.0) -> tuple[float, int, int]:
    """(percentile of the velocity jumps over every frame of the split's real clips, clips, frames)."""
    names = (Path(data) / f"{split}.txt").read_text().split()
    jumps = [velocity_jumps(np.load(Path(data) / "new_joints" / f"{name}.npy").astype(np.float64))
             for name in names if (Path(data) / "new_joints" / f"{name}.npy").is_file()]
    if not jumps:
        raise ValueError(f"{data}: no clip of the {split} split found under new_joints/")
    values = np.concatenate(jumps)
    return float(np.percentile(values, percentile)), len(jumps), int(values.size)


def seam_bounds(data: Path, split: str = "test", limit_split: str = "train") -> dict:
    """The seam figures from real clips, as eval-edits reports them: `bound`, the check (p95 of the velocity jumps of
    `split`), and `seam_limit`, the measurement behind EditSettings.seam_limit (p95 of `limit_split`) beside the
    setting in use."""
    bound, clips, frames = velocity_jump_bound(data, split)
    limit, limit_clips, limit_frames = velocity_jump_bound(data, limit_split)
    return {"bound": {"p95_velocity_jump_m": bound, "data": str(data), "split": split, "clips": clips,
                      "frames": frames},
            "seam_limit": {"p95_velocity_jump_m": limit, "data": str(data), "split": limit_split,
                           "clips": limit_clips, "frames": limit_frames,
                           "setting_m": EditSettings.seam_limit}}


def window_jumps(joints: np.ndarray, regions: list[tuple[int, int]], blend: int) -> list[float]:
    """The largest velocity jump over each whole seam window (the cross-fade and one frame either side); unlike
    seam_jumps it also counts the generated motion's own changes of speed next to the seam (a jump's take-off)."""
    jumps = velocity_jumps(joints.astype(np.float64))
    frames = len(joints)
    windows = [(f0 - blend - 1, f0 + 1) for f0, _ in regions if f0 > 0]
    windows += [(f1 - 1, f1 + blend + 1) for _, f1 in regions if f1 < frames]
    return [float(jumps[max(lo, 1) - 1:min(hi, frames - 2)].max()) for lo, hi in windows]


def pelvis_lift(joints: np.ndarray, start: int, end: int) -> float:
    """Highest pelvis height in frames [start, end) above its height on the first frame of the take, metres."""
    return float(joints[start:end, J["pelvis"], UP].max() - joints[0, J["pelvis"], UP])


@dataclass
class EditSuite:
    """Results of the edit checks, and the seam jumps (seam_jumps) and seam-window jumps (window_jumps) measured on
    the way, per operation."""

    checks: list[CheckResult]
    seam_jumps: dict[str, list[float]] = field(default_factory=dict)
    window_jumps: dict[str, list[float]] = field(default_factory=dict)
    bound: float | None = None


def run_edit_suite(editor: Editor, seeds=range(10), bound: float | None = None) -> EditSuite:
    """Jump in the middle of a walk, sit after a walk, in-between of a walk and a wave (one source per seed), and
    every seam against `bound` (None: not checked)."""
    seeds = list(seeds)
    fps, unit, blend = editor.fps, editor.unit, editor.settings.blend_frames
    sources = {}
    for prompt, seconds in ((WALK, 6.0), (WAVE, 3.0)):
        motions = editor.safe.generator.generate([GenerationRequest(prompt, seconds, seed) for seed in seeds],
                                                 smpl=False)
        sources[prompt] = [source_from_features(m.features, m.fps, f"{prompt!r} seed {m.seed}") for m in motions]
    f0, f1 = (round(s * fps) for s in JUMP_SPAN_S)
    jump = CheckResult("jump in the middle 2 s of a 6 s walk, walking outside", (JUMP_PROMPT,))
    sit = CheckResult("extending a walk with 'then sits down' ends lower", (SIT_PROMPT,))
    between = CheckResult("in-between of a walk and a wave: no root or foot jump over the bound", (BETWEEN_PROMPT,))
    seams = CheckResult("every seam's velocity jump within the bound", (JUMP_PROMPT, SIT_PROMPT, BETWEEN_PROMPT))
    suite = EditSuite([jump, sit, between, seams], {"edit": [], "extend": [], "inbetween": []},
                      {"edit": [], "extend": [], "inbetween": []}, bound)
    for walk, wave, seed in zip(sources[WALK], sources[WAVE], seeds):
        walk: SourceMotion
        frames = len(walk.joints) // unit * unit
        joints = editor.edit(walk, [(f0, f1)], JUMP_PROMPT, seed=seed, smpl=False)[0].motion.joints
        (r0, r1), = [(t0 * unit, t1 * unit) for t0, t1 in token_regions([(f0, f1)], frames // unit, unit,
                                                                         editor.settings.margin_tokens)]
        lift = pelvis_lift(joints, f0, f1)
        outside = min(speed(joints[:r0 - blend], fps), speed(joints[r1 + blend:], fps))
        jump.passed.append(lift >= MIN_JUMP_M and outside >= MIN_WALK_SPEED_MPS)
        jump.measured.append({"pelvis_lift_m": lift, "walk_speed_outside_mps": outside})
        worst = _record(suite, "edit", joints, (r0, r1), blend)

        extended = editor.extend(walk, 2.0, SIT_PROMPT, seed=seed, smpl=False)[0].motion.joints
        drop = float(extended[0, J["pelvis"], UP] - extended[-1, J["pelvis"], UP])
        sit.passed.append(drop >= MIN_SIT_DROP_M)
        sit.measured.append({"pelvis_drop_m": drop})
        worst = max(worst, _record(suite, "extend", extended, (frames, len(extended)), blend))

        joints = editor.inbetween(walk, wave, 1.5, BETWEEN_PROMPT, seed=seed, smpl=False)[0].motion.joints
        middle = (frames, frames + round(1.5 * fps) // unit * unit)
        worst = max(worst, _record(suite, "inbetween", joints, middle, blend))
        transition = joints[middle[0] - blend - 1:middle[1] + blend + 1].astype(np.float64)
        root = float(velocity_jumps(transition[:, [J["pelvis"]]]).max())
        feet = float(velocity_jumps(transition[:, [J[n] for n in FEET]]).max())
        between.passed.append(bound is not None and max(root, feet) <= bound)
        between.measured.append({"root_jump_m": root, "foot_jump_m": feet})
        seams.passed.append(bound is not None and worst <= bound)
        seams.measured.append({"largest_seam_jump_m": worst})
    return suite


def _record(suite: EditSuite, operation: str, joints: np.ndarray, region: tuple[int, int], blend: int) -> float:
    """Add one result's seam and window jumps to the suite; its largest seam jump."""
    seams = seam_jumps(joints, [region], blend)
    suite.seam_jumps[operation] += seams
    suite.window_jumps[operation] += window_jumps(joints, [region], blend)
    return max(seams)
