"""Prompt adherence: physical checks that generated joints do what in-domain prompts ask (issue 3's suite), and the
same checks on paraphrased wordings a new user would type, none of them a training caption (issue 15).

Joints are (T, 22, 3) SMPL-22 positions in metres, Y up, at the model's fps. Each check takes the motions generated
for its prompts (one per seed, seeds paired across prompts) and says, per seed, whether it passed and what it
measured, so the pass rate and the numbers behind it can be reported.

    results = run_suite(generator, seeds=range(5))
    {r.name: r.pass_rate for r in results}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from safemotion.generate import GenerationRequest, Generator
from safemotion.motion.skeleton import SMPL22_NAMES

J = {name: i for i, name in enumerate(SMPL22_NAMES)}
UP = 1  # Y
MIN_WALK_M = 1.0  # "walks forward" travels at least this far in 4 s
MIN_BACKWARD_M = 0.2  # "walks backwards": net travel against the facing, at least this much
MIN_DROP_M = 0.15  # "bows" lowers the head / "jumps" lifts the pelvis by at least this much
MAX_BOW_TRAVEL_M = 0.3  # "bows" keeps the pelvis within this horizontal distance of where it started
MAX_STILL_M = 0.5  # "stays still" keeps the pelvis within this horizontal distance of where it started


@dataclass
class CheckResult:
    """Pass/fail and the measured values of one check for each seed."""

    name: str
    prompts: tuple[str, ...]
    passed: list[bool] = field(default_factory=list)
    measured: list[dict[str, float]] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        """Share of seeds that passed."""
        return float(np.mean(self.passed)) if self.passed else 0.0


def horizontal(vectors: np.ndarray) -> np.ndarray:
    """The X/Z components of (..., 3) vectors."""
    return vectors[..., [0, 2]]


def facing(joints: np.ndarray) -> np.ndarray:
    """Unit horizontal facing per frame (T, 2), HumanML3D's way: up × (hip and shoulder across vectors)."""
    across = (joints[:, J["right_hip"]] - joints[:, J["left_hip"]]
              + joints[:, J["right_shoulder"]] - joints[:, J["left_shoulder"]])
    forward = np.cross(np.array([0.0, 1.0, 0.0]), across)
    forward = horizontal(forward)
    return forward / np.maximum(np.linalg.norm(forward, axis=-1, keepdims=True), 1e-9)


def travel(joints: np.ndarray) -> np.ndarray:
    """Horizontal pelvis displacement from the first to the last frame (2,)."""
    pelvis = horizontal(joints[:, J["pelvis"]])
    return pelvis[-1] - pelvis[0]


def speed(joints: np.ndarray, fps: float) -> float:
    """Mean horizontal pelvis speed in m/s (path length over duration)."""
    steps = np.diff(horizontal(joints[:, J["pelvis"]]), axis=0)
    return float(np.linalg.norm(steps, axis=-1).sum() * fps / max(len(joints) - 1, 1))


def walks_forward(joints: np.ndarray) -> tuple[bool, dict[str, float]]:
    """Travels at least MIN_WALK_M."""
    distance = float(np.linalg.norm(travel(joints)))
    return distance >= MIN_WALK_M, {"distance_m": distance}


def walks_backwards(joints: np.ndarray) -> tuple[bool, dict[str, float]]:
    """Net travel along the mean facing is at least MIN_BACKWARD_M backwards."""
    mean_facing = facing(joints).mean(axis=0)
    mean_facing /= max(float(np.linalg.norm(mean_facing)), 1e-9)
    along = float(travel(joints) @ mean_facing)
    return along <= -MIN_BACKWARD_M, {"along_facing_m": along}


def raises_hand(side: str) -> Callable[[np.ndarray], tuple[bool, dict[str, float]]]:
    """Check for "raises the <side> hand above the head": at the frame where that wrist is highest relative to the
    head, it is above the head and the other wrist is below its shoulder."""
    other = "left" if side == "right" else "right"

    def check(joints: np.ndarray) -> tuple[bool, dict[str, float]]:
        over_head = joints[:, J[f"{side}_wrist"], UP] - joints[:, J["head"], UP]
        frame = int(np.argmax(over_head))
        other_margin = joints[frame, J[f"{other}_wrist"], UP] - joints[frame, J[f"{other}_shoulder"], UP]
        return bool(over_head[frame] > 0 and other_margin < 0), {
            f"{side}_wrist_over_head_m": float(over_head[frame]),
            f"{other}_wrist_over_shoulder_m": float(other_margin)}

    check.__name__ = f"raises_{side}_hand"
    return check


def bows(joints: np.ndarray) -> tuple[bool, dict[str, float]]:
    """The head drops at least MIN_DROP_M below its starting height while the pelvis stays in place."""
    drop = float(joints[0, J["head"], UP] - joints[:, J["head"], UP].min())
    pelvis = horizontal(joints[:, J["pelvis"]])
    wander = float(np.linalg.norm(pelvis - pelvis[0], axis=-1).max())
    return drop >= MIN_DROP_M and wander <= MAX_BOW_TRAVEL_M, {"head_drop_m": drop, "pelvis_wander_m": wander}


def stays_still(joints: np.ndarray) -> tuple[bool, dict[str, float]]:
    """The pelvis stays within MAX_STILL_M (horizontally) of where it started."""
    pelvis = horizontal(joints[:, J["pelvis"]])
    wander = float(np.linalg.norm(pelvis - pelvis[0], axis=-1).max())
    return wander <= MAX_STILL_M, {"pelvis_wander_m": wander}


def jumps(joints: np.ndarray) -> tuple[bool, dict[str, float]]:
    """The pelvis rises at least MIN_DROP_M above its starting height."""
    lift = float(joints[:, J["pelvis"], UP].max() - joints[0, J["pelvis"], UP])
    return lift >= MIN_DROP_M, {"pelvis_lift_m": lift}


SINGLE_CHECKS: dict[str, tuple[str, Callable[[np.ndarray], tuple[bool, dict[str, float]]]]] = {
    "walk forward ≥ 1 m in 4 s": ("a person walks forward", walks_forward),
    "walk backwards against the facing": ("a person walks backwards", walks_backwards),
    "right hand above head, left below shoulder": ("a person raises the right hand above the head",
                                                   raises_hand("right")),
    "left hand above head, right below shoulder": ("a person raises the left hand above the head",
                                                   raises_hand("left")),
    "bow lowers the head ≥ 15 cm, pelvis in place": ("a person bows", bows),
    "jump lifts the pelvis ≥ 15 cm": ("a person jumps", jumps),
}
RUN_VS_WALK = ("a person runs", "a person walks")
SECONDS = 4.0
STILL_SECONDS = 3.0

# Paraphrases: (prompt, seconds, check), and pairs (expected slower, expected faster) compared on mean pelvis speed.
PARAPHRASE_CHECKS: dict[str, tuple[str, float, Callable[[np.ndarray], tuple[bool, dict[str, float]]]]] = {
    "'stays still': pelvis within 0.5 m over 3 s": ("someone stays still", STILL_SECONDS, stays_still),
    "'leaps into the air': pelvis lifts ≥ 15 cm": ("someone leaps into the air", SECONDS, jumps),
    "'lifts their right arm over their head'": ("someone lifts their right arm over their head", SECONDS,
                                                raises_hand("right")),
    "'backs up a few steps': against the facing": ("a person backs up a few steps", SECONDS, walks_backwards),
}
PARAPHRASE_SPEEDS: dict[str, tuple[str, str]] = {
    "'strolls ahead at an easy pace' slower than 'walks forward'": ("a person strolls ahead at an easy pace",
                                                                    "a person walks forward"),
    "'ambles along slowly' slower than 'walks forward'": ("a person ambles along slowly", "a person walks forward"),
    "'jogs along' faster than 'walks forward'": ("a person walks forward", "a man jogs along"),
}


def run_suite(generator: Generator, seeds: Iterable[int] = range(5), seconds: float = SECONDS,
              paraphrases: bool = True) -> list[CheckResult]:
    """Generate every prompt of the suite for each seed (one batch) and evaluate every check (the in-domain ones at
    `seconds`; with `paraphrases`, also the paraphrase checks at their own durations)."""
    seeds = list(seeds)
    singles = {name: (prompt, seconds, check) for name, (prompt, check) in SINGLE_CHECKS.items()}
    pairs = {"run faster than walk": RUN_VS_WALK[::-1]}
    if paraphrases:
        singles |= PARAPHRASE_CHECKS
        pairs |= PARAPHRASE_SPEEDS
    wanted = [(prompt, length) for prompt, length, _ in singles.values()]
    wanted += [(prompt, seconds) for pair in pairs.values() for prompt in pair]
    requests = [GenerationRequest(prompt, seconds=length, seed=seed)
                for prompt, length in dict.fromkeys(wanted) for seed in seeds]
    motions = generator.generate(requests, smpl=False)
    joints = {(r.prompt, r.seconds, r.seed): m.joints.astype(np.float64) for r, m in zip(requests, motions)}
    results = []
    for name, (prompt, length, check) in singles.items():
        result = CheckResult(name, (prompt,))
        for seed in seeds:
            passed, measured = check(joints[prompt, length, seed])
            result.passed.append(bool(passed))
            result.measured.append(measured)
        results.append(result)
    for name, (slower, faster) in pairs.items():
        result = CheckResult(name, (slower, faster))
        for seed in seeds:
            low, high = (speed(joints[prompt, seconds, seed], generator.fps) for prompt in (slower, faster))
            result.passed.append(high > low)
            result.measured.append({"slower_speed_mps": low, "faster_speed_mps": high})
        results.append(result)
    return results
