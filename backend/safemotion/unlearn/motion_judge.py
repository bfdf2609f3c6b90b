"""The motion judge: P(motion shows the concept), from windowed joint features, independent of the codebook.

Features (`window_features`): joints [T, 22, 3] (HumanML3D order, metres, Y-up, 20 fps) become per-frame body-centred
signals, heading-free and symmetric in left/right:

    hand speed, foot speed, hand acceleration (relative to the pelvis), arm-extension speed (d|wrist − shoulder|/dt),
    hand reach (horizontal, from the chest), hand height above the neck, foot height above the pelvis, foot reach,
    knee height above the pelvis, pelvis speed, yaw rate of the hips, pelvis height above the lowest foot

and each 1-second window (20 frames, hop 10) is summarised by the max, mean and standard deviation of every signal
(36 numbers). A clip is the element-wise max over its windows, so a strike anywhere in it shows; a single second is
one window, which gives `safemotion audit` its per-second scores with the same classifier.

Training (`train_motion_judge`): clips of a HumanML3D-layout dataset labelled violent (forget split of the concept)
or not (retain split); clips whose take has a label in `take_labels` (e.g. the ASE sword-and-shield clips: attacks
violent, guard stances, blocks, falls and locomotion not) take that label instead of the caption rule, so the judge
learns strikes rather than "looks like combat". Fitted on the train split, Platt-calibrated on the val split;
`cross_validate_judge` scores every clip with a model that never saw its take (group k-fold by take).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safemotion.data.motion_dataset import read_split
from safemotion.models.config import ModelConfig
from safemotion.motion.features import FEATURE_DIM, NUM_JOINTS
from safemotion.unlearn.classifier import (
    SmallClassifier,
    TrainSettings,
    fit_classifier,
    fit_platt,
    load_classifier,
    save_classifier,
)
from safemotion.unlearn.concept_split import load_concept_split
from safemotion.unlearn.flagging import roc_auc

MOTION_JUDGE_FILE = "motion_judge.safetensors"
KIND = "motion-judge"
FPS = 20.0
WINDOW, HOP = 20, 10
PELVIS, L_SHOULDER, R_SHOULDER, L_WRIST, R_WRIST = 0, 16, 17, 20, 21
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE, CHEST, NECK = 1, 2, 4, 5, 7, 8, 9, 12
SIGNALS = 12
LAYOUT = {"features": "window-joint-stats-v1", "joints": NUM_JOINTS, "fps": FPS, "window": WINDOW,
          "dim_pose": FEATURE_DIM}


def frame_signals(joints: np.ndarray, fps: float = FPS) -> np.ndarray:
    """Per-frame body-centred signals (T, 12) of joints [T, 22, 3] (see the module docstring)."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"joints have shape {list(joints.shape)}, expected [T, {NUM_JOINTS}, 3]")
    if len(joints) < 2:
        raise ValueError("a motion of fewer than 2 frames has no movement to judge")
    pelvis = joints[:, PELVIS]
    rel = joints - pelvis[:, None]
    hands, feet = rel[:, [L_WRIST, R_WRIST]], rel[:, [L_ANKLE, R_ANKLE]]
    velocity = lambda x: np.gradient(x, 1.0 / fps, axis=0)  # noqa: E731
    hand_speed = np.linalg.norm(velocity(hands), axis=-1).max(1)
    foot_speed = np.linalg.norm(velocity(feet), axis=-1).max(1)
    hand_accel = np.linalg.norm(velocity(velocity(hands)), axis=-1).max(1)
    arm_length = np.linalg.norm(joints[:, [L_WRIST, R_WRIST]] - joints[:, [L_SHOULDER, R_SHOULDER]], axis=-1)
    extension = velocity(arm_length).max(1)
    chest = rel[:, CHEST]
    reach = np.linalg.norm((hands - chest[:, None])[..., [0, 2]], axis=-1).max(1)
    hand_height = (hands[..., 1] - rel[:, None, NECK, 1]).max(1)
    foot_height = feet[..., 1].max(1)
    foot_reach = np.linalg.norm(feet[..., [0, 2]], axis=-1).max(1)
    knee_height = rel[:, [L_KNEE, R_KNEE], 1].max(1)
    pelvis_speed = np.linalg.norm(velocity(pelvis)[:, [0, 2]], axis=-1)
    across = joints[:, R_HIP] - joints[:, L_HIP]
    yaw = np.unwrap(np.arctan2(across[:, 2], across[:, 0]))
    yaw_rate = np.abs(velocity(yaw))
    ground = joints[:, [L_ANKLE, R_ANKLE, 10, 11], 1].min(1)
    pelvis_height = pelvis[:, 1] - ground
    return np.stack([hand_speed, foot_speed, hand_accel, extension, reach, hand_height, foot_height, foot_reach,
                     knee_height, pelvis_speed, yaw_rate, pelvis_height], axis=1)


def _summarise(signals: np.ndarray) -> np.ndarray:
    return np.concatenate([signals.max(0), signals.mean(0), signals.std(0)])


def window_features(joints: np.ndarray, fps: float = FPS, starts: Sequence[int] | None = None) -> np.ndarray:
    """(windows, 36) features of 1-second windows starting at `starts` (default: every HOP frames)."""
    signals = frame_signals(joints, fps)
    frames = len(signals)
    if starts is None:
        starts = range(0, max(frames - WINDOW, 0) + 1, HOP)
    return np.stack([_summarise(signals[s:min(s + WINDOW, frames)]) for s in starts])


def clip_features(joints: np.ndarray) -> np.ndarray:
    """(36,) features of a whole clip: the element-wise max over its windows."""
    return window_features(joints).max(0)


@dataclass
class MotionJudge:
    """The trained judge of one model."""

    classifier: SmallClassifier
    concept: str

    def score(self, joints: np.ndarray) -> float:
        """P(concept) of a whole motion (joints [T, 22, 3] at 20 fps)."""
        return float(self.classifier.probabilities(clip_features(joints)[None])[0])

    def per_second(self, joints: np.ndarray) -> list[float]:
        """P(concept) of the 1-second window starting at each whole second (the last one may be shorter)."""
        frames = len(joints)
        starts = [s for s in range(0, frames, int(FPS)) if frames - s >= 2]
        return self.classifier.probabilities(window_features(joints, starts=starts)).tolist()


def read_take_labels(labels_tsv: str | Path) -> dict[str, int]:
    """Take name → 1 (violent) / 0 from a labels.tsv with columns clip and violent_content ('yes ...' / 'no ...')."""
    with open(labels_tsv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "clip" not in rows[0] or "violent_content" not in rows[0]:
        raise ValueError(f"{labels_tsv}: expected tab-separated columns 'clip' and 'violent_content'")
    return {row["clip"]: int(row["violent_content"].strip().lower().startswith("yes")) for row in rows}


@dataclass
class JudgeData:
    """Clip features, labels, takes and splits of a dataset."""

    ids: list[str]
    features: np.ndarray  # (N, 36)
    labels: np.ndarray  # (N,) 0/1
    takes: list[str]
    splits: list[str]
    relabelled: np.ndarray  # (N,) bool: label taken from take_labels


def judge_data(dataset: str | Path, concept: str, rule: str, take_labels: dict[str, int] | None = None) -> JudgeData:
    """Every clip of the dataset's train, val and test splits with its label (see the module docstring)."""
    dataset = Path(dataset)
    take_of = _takes(dataset)
    take_labels = take_labels or {}
    rows: list[tuple[str, int, str, str, bool]] = []
    for split in ("train", "val", "test"):
        concept_split = load_concept_split(dataset, concept, rule, split)
        for clip_id in read_split(dataset, split):
            take = take_of.get(clip_id.removeprefix("M"), clip_id.removeprefix("M"))
            name = take.rsplit("/", 1)[-1]
            if name in take_labels:
                rows.append((clip_id, take_labels[name], take, split, True))
            elif clip_id in concept_split.forget_ids or clip_id in concept_split.retain_ids:
                rows.append((clip_id, int(clip_id in concept_split.forget_ids), take, split, False))
    features = np.stack([clip_features(np.load(dataset / "new_joints" / f"{r[0]}.npy")) for r in rows])
    return JudgeData([r[0] for r in rows], features, np.array([r[1] for r in rows]), [r[2] for r in rows],
                     [r[3] for r in rows], np.array([r[4] for r in rows]))


def _takes(dataset: Path) -> dict[str, str]:
    index = dataset / "index.csv"
    if not index.is_file():
        return {}
    with open(index, newline="", encoding="utf-8") as handle:
        return {row["id"]: f"{row['source']}/{row['take']}" for row in csv.DictReader(handle)}


def train_motion_judge(data: JudgeData, concept: str, settings: TrainSettings = TrainSettings()) -> MotionJudge:
    """Fit on the train split's clips and Platt-calibrate on the val split's."""
    splits = np.array(data.splits)
    model = fit_classifier(data.features[splits == "train"], data.labels[splits == "train"], settings)
    fit_platt(model, data.features[splits == "val"], data.labels[splits == "val"])
    return MotionJudge(model, concept)


def cross_validate_judge(data: JudgeData, folds: int = 5, settings: TrainSettings = TrainSettings()) -> np.ndarray:
    """Held-out probability of every clip from a model trained (and Platt-fitted) on the other folds of takes."""
    takes = sorted(set(data.takes))
    order = np.random.default_rng(settings.seed).permutation(len(takes))
    fold_of_take = {takes[i]: k % folds for k, i in enumerate(order)}
    fold = np.array([fold_of_take[t] for t in data.takes])
    scores = np.zeros(len(data.ids))
    for k in range(folds):
        held = fold == k
        model = fit_classifier(data.features[~held], data.labels[~held], settings)
        fit_platt(model, data.features[~held], data.labels[~held])
        scores[held] = model.probabilities(data.features[held])
    return scores


def judge_report(data: JudgeData, scores: np.ndarray, threshold: float) -> dict:
    """AUC of held-out scores, and the share of relabelled (e.g. ASE) non-violent clips at or above `threshold`."""
    labels = data.labels
    quiet = data.relabelled & (labels == 0)
    return {"clips": len(labels), "violent": int(labels.sum()), "takes": len(set(data.takes)),
            "auc": roc_auc(scores[labels == 1], scores[labels == 0]), "threshold": threshold,
            "violent_flagged": float((scores[labels == 1] >= threshold).mean()),
            "safe_flagged": float((scores[labels == 0] >= threshold).mean()),
            "relabelled_non_violent": int(quiet.sum()),
            "relabelled_non_violent_flagged": float((scores[quiet] >= threshold).mean()) if quiet.any() else None}


def save_motion_judge(judge: MotionJudge, model_dir: str | Path) -> Path:
    """Write motion_judge.safetensors into the model directory."""
    return save_classifier(judge.classifier, Path(model_dir) / MOTION_JUDGE_FILE, KIND, judge.concept, LAYOUT)


def load_motion_judge(model_dir: str | Path, config: ModelConfig) -> MotionJudge:
    """The model's motion judge; one whose feature layout does not match the model's motions raises ValueError."""
    classifier, concept, layout = load_classifier(Path(model_dir) / MOTION_JUDGE_FILE, KIND)
    expected = {**LAYOUT, "fps": float(config.fps), "dim_pose": config.vq.dim_pose}
    if layout != expected or classifier.dim != 3 * SIGNALS:
        raise ValueError(f"{model_dir}: the motion judge was made for {layout}, but this model's motions are "
                         f"{expected}; retrain it with `safemotion unlearn screens`")
    return MotionJudge(classifier, concept)
