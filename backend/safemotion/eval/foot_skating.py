"""Foot skating, foot contact and ground penetration of joint motions, as the text-to-motion literature measures them.

Joints are (T, 22, 3) HumanML3D positions in metres, Y up, floor at y = 0, at `fps`. "Toes" are the SMPL foot joints
(left_foot 10, right_foot 11), the ones GMD and OmniControl measure.

- Skating ratio (GMD, Karunratanakul et al. 2023; OmniControl): share of the T-1 frame steps in which either toe is
  below 5 cm in both frames of the step and moves horizontally faster than 0.5 m/s (2.5 cm per frame at 20 fps), both
  in that step and in the 5-step moving average (zero-padded at the ends, as GMD's uniform_filter1d).
- Contact ratio: share of the T-1 steps in which a toe is planted (below 5 cm and slower than 0.2 m/s), averaged over
  the two feet.
- Penetration: per frame, how far the lowest foot joint (ankles and toes) is below the floor (0 when above); its maximum
  and its mean over frames.

    metrics = foot_metrics(joints, fps=20.0)
    report = feet_report(generator, Path("datasets/safemotion-v1"), seeds=range(6))
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy.ndimage import uniform_filter1d

from safemotion.generate import GenerationRequest, Generator
from safemotion.motion.foot_contact import FOOT_JOINTS, clean_feet

TOES = (10, 11)
SKATE_HEIGHT_M = 0.05
SKATE_SPEED_MPS = 0.5
SKATE_WINDOW = 5
CONTACT_HEIGHT_M = 0.05
CONTACT_SPEED_MPS = 0.2


@dataclass
class FootMetrics:
    """Foot metrics of one motion or the mean over several."""

    skating_ratio: float
    contact_ratio: float
    max_penetration_m: float
    mean_penetration_m: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return asdict(self)


def _toe_steps(joints: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal toe speeds (T-1, 2) in m/s and whether each toe is below SKATE_HEIGHT_M at both ends of the step."""
    toes = joints[:, TOES]
    speeds = np.linalg.norm(np.diff(toes[..., [0, 2]], axis=0), axis=-1) * fps
    low = toes[..., 1] < SKATE_HEIGHT_M
    return speeds, low[:-1] & low[1:]


def skating_ratio(joints: np.ndarray, fps: float) -> float:
    """GMD's foot skating ratio (see the module doc)."""
    speeds, low = _toe_steps(joints, fps)
    average = uniform_filter1d(speeds, size=SKATE_WINDOW, axis=0, mode="constant")
    skating = low & (speeds > SKATE_SPEED_MPS) & (average > SKATE_SPEED_MPS)
    return float(skating.any(axis=1).mean())


def contact_ratio(joints: np.ndarray, fps: float) -> float:
    """Share of steps a toe is planted (below CONTACT_HEIGHT_M, slower than CONTACT_SPEED_MPS), mean of both feet."""
    speeds, _ = _toe_steps(joints, fps)
    planted = (joints[:-1, TOES, 1] < CONTACT_HEIGHT_M) & (speeds < CONTACT_SPEED_MPS)
    return float(planted.mean())


def penetration(joints: np.ndarray) -> tuple[float, float]:
    """(max, mean over frames) depth of the lowest foot joint below y = 0, in metres."""
    depth = np.maximum(-joints[:, FOOT_JOINTS, 1].min(axis=1), 0.0)
    return float(depth.max()), float(depth.mean())


def foot_metrics(joints: np.ndarray, fps: float) -> FootMetrics:
    """All foot metrics of one motion (T >= 2 frames)."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (22, 3) or len(joints) < 2:
        raise ValueError(f"foot_metrics: expected joints of shape [T >= 2, 22, 3], got {joints.shape}")
    deepest, mean_depth = penetration(joints)
    return FootMetrics(skating_ratio(joints, fps), contact_ratio(joints, fps), deepest, mean_depth)


def mean_metrics(metrics: list[FootMetrics]) -> FootMetrics:
    """Mean of each metric over motions (the maximum for the maximum penetration)."""
    if not metrics:
        raise ValueError("mean_metrics: no motions to average")
    return FootMetrics(float(np.mean([m.skating_ratio for m in metrics])),
                       float(np.mean([m.contact_ratio for m in metrics])),
                       float(np.max([m.max_penetration_m for m in metrics])),
                       float(np.mean([m.mean_penetration_m for m in metrics])))


# ---------------------------------------------------------------------------------------------- report

# Prompts for generated motion and the Bandai contents of the real clips of the same kind.
KINDS = {"walk": ("a person walks forward", ("walk",)), "run": ("a person runs", ("run",))}
SECONDS = 4.0


def real_clip_ids(data: Path, split: str, contents: tuple[str, ...]) -> list[str]:
    """Ids (mirrors included) of the split's Bandai windows whose take's content is one of `contents`."""
    split_file, index_file = data / f"{split}.txt", data / "index.csv"
    for path in (split_file, index_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; pass a dataset built by `safemotion data build`")
    in_split = set(split_file.read_text(encoding="utf-8").split())
    ids = []
    with index_file.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            take = row["take"].rsplit("/", 1)[-1]
            parts = take.split("_")
            if row["source"].startswith("bandai") and len(parts) >= 3 and parts[1] in contents:
                ids += [i for i in (row["id"], f"M{row['id']}") if i in in_split]
    return ids


def feet_report(generator: Generator, data: Path | None, seeds: Iterable[int] = range(6), split: str = "test",
                seconds: float = SECONDS) -> dict:
    """Foot metrics of generated walks and runs (before and after the clean-up, per motion and mean) and, with a
    dataset, of the split's real walk and run clips."""
    seeds = list(seeds)
    requests = [GenerationRequest(prompt, seconds=seconds, seed=seed, foot_cleanup=False)
                for prompt, _ in KINDS.values() for seed in seeds]
    motions = generator.generate(requests, smpl=False)
    report: dict = {"definitions": {"skating": f"either toe below {SKATE_HEIGHT_M} m and faster than "
                                               f"{SKATE_SPEED_MPS} m/s (step and {SKATE_WINDOW}-step mean)",
                                    "contact": f"toe below {CONTACT_HEIGHT_M} m and slower than {CONTACT_SPEED_MPS} "
                                               "m/s, mean of both feet",
                                    "penetration": "lowest ankle/toe below y = 0 per frame"},
                    "generated": {}, "real": {}}
    for kind, (prompt, contents) in KINDS.items():
        own = [m for m in motions if m.prompt == prompt]
        raw = [foot_metrics(m.joints, m.fps) for m in own]
        cleaned = [foot_metrics(clean_feet(m.joints, m.features, m.fps).joints, m.fps) for m in own]
        report["generated"][kind] = {
            "prompt": prompt, "seeds": seeds, "seconds": seconds,
            "raw": mean_metrics(raw).to_dict(), "cleaned": mean_metrics(cleaned).to_dict(),
            "per_seed": [{"seed": m.seed, "raw": r.to_dict(), "cleaned": c.to_dict()}
                         for m, r, c in zip(own, raw, cleaned)]}
        if data is not None:
            ids = real_clip_ids(Path(data), split, contents)
            if ids:
                real = [foot_metrics(np.load(Path(data) / "new_joints" / f"{i}.npy"), generator.fps) for i in ids]
                report["real"][kind] = {"split": split, "contents": list(contents), "clips": len(ids),
                                        **mean_metrics(real).to_dict()}
    return report
