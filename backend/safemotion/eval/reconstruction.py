"""VQ reconstruction quality: encode → quantise (all layers) → decode every clip of a split, then compare joints.

MPJPE as MoMask reports it (`calculate_mpjpe` in momask-codes' utils/eval_t2m.py): joints recovered from the original
and from the reconstructed features (recover_from_ric), each frame made pelvis-relative, Euclidean distance averaged
over the 22 joints and all frames, in metres. The global error (no pelvis alignment, so the integrated root
trajectory's drift counts too) is reported beside it. Clips are cropped to a multiple of the VQ's downsampling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from safemotion.data.motion_dataset import load_motion, read_split
from safemotion.models.model_dir import MotionModels
from safemotion.motion.features import recover_from_ric
from safemotion.motion.normalization import Normalizer


@dataclass
class ReconstructionReport:
    """Joint errors of a VQ on one split."""

    split: str
    clips: int
    frames: int
    mpjpe_m: float  # pelvis-aligned, mean over all frames of all clips
    global_mpjpe_m: float  # not aligned: includes root trajectory drift
    clip_mpjpe_median_m: float
    clip_mpjpe_p90_m: float
    worst_clip: str
    worst_clip_mpjpe_m: float

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)


@torch.inference_mode()
def reconstruct(models: MotionModels, features: np.ndarray) -> np.ndarray:
    """Features (T, 263) → the VQ's reconstruction (T', 263), T' = T floored to the downsampling factor."""
    normalizer = Normalizer(models.mean, models.std)
    usable = features.shape[0] - features.shape[0] % models.config.vq.downsample
    if usable <= 0:
        raise ValueError(f"motion has {features.shape[0]} frames; need at least {models.config.vq.downsample}")
    x = torch.from_numpy(normalizer.normalize(features[:usable]).astype(np.float32))[None]
    ids, _ = models.vq.encode(x)
    return normalizer.denormalize(models.vq.forward_decoder(ids)[0].float()).numpy()


def joint_errors(reference: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-frame mean joint distance (T,) between two (T, J, 3) joint arrays."""
    return np.linalg.norm(predicted - reference, axis=-1).mean(axis=-1)


def reconstruction_error(models: MotionModels, data: str | Path, split: str = "test",
                         max_clips: int | None = None) -> ReconstructionReport:
    """MPJPE of the model's VQ over the clips of `split` in the HumanML3D-layout dataset `data`."""
    ids = read_split(data, split)[:max_clips]
    if not ids:
        raise ValueError(f"{data}: split {split!r} lists no clips")
    errors, global_errors, per_clip = [], [], []
    for clip_id in ids:
        features = load_motion(data, clip_id)
        recon = reconstruct(models, features)
        original, predicted = recover_from_ric(features[:recon.shape[0]]), recover_from_ric(recon)
        error = joint_errors(original - original[:, :1], predicted - predicted[:, :1])
        errors.append(error)
        global_errors.append(joint_errors(original, predicted))
        per_clip.append(float(error.mean()))
    worst = int(np.argmax(per_clip))
    return ReconstructionReport(
        split=split, clips=len(ids), frames=int(sum(len(e) for e in errors)),
        mpjpe_m=float(np.concatenate(errors).mean()), global_mpjpe_m=float(np.concatenate(global_errors).mean()),
        clip_mpjpe_median_m=float(np.median(per_clip)),
        clip_mpjpe_p90_m=float(np.percentile(per_clip, 90)), worst_clip=ids[worst], worst_clip_mpjpe_m=per_clip[worst],
    )
