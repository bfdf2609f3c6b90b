"""Feature normalisation statistics: HumanML3D group-averaged std, MoMask's feat_bias scaling, and a Normalizer."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from safemotion.motion import features as feat

FEAT_BIAS = 5.0

# Each group's std is replaced by the mean of its per-dimension stds (HumanML3D cal_mean_variance).
STD_GROUPS: tuple[slice, ...] = (
    feat.ROOT_ROT_VEL, feat.ROOT_LIN_VEL, feat.ROOT_Y, feat.RIC, feat.ROT, feat.LOCAL_VEL, feat.CONTACTS,
)
# Groups whose std MoMask divides by feat_bias, so they weigh more after normalisation.
BIASED_GROUPS: tuple[slice, ...] = (slice(0, 4), feat.CONTACTS)


def _stack(features: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Stack a list of [T_i, 263] clips (or take an array [..., 263]) into [N, 263] float64, rejecting NaN/inf."""
    if isinstance(features, (list, tuple)):
        if not features:
            raise ValueError("normalization: got an empty list of feature clips")
        for i, clip in enumerate(features):
            clip = np.asarray(clip)
            if clip.ndim != 2 or clip.shape[-1] != feat.FEATURE_DIM:
                raise ValueError(f"normalization: clip {i} has shape {clip.shape}, expected [T, {feat.FEATURE_DIM}]")
        data = np.concatenate([np.asarray(c, dtype=np.float64) for c in features], axis=0)
    else:
        data = np.asarray(features, dtype=np.float64)
        if data.shape[-1:] != (feat.FEATURE_DIM,):
            raise ValueError(f"normalization: expected features [..., {feat.FEATURE_DIM}], got {data.shape}")
        data = data.reshape(-1, feat.FEATURE_DIM)
    if not np.all(np.isfinite(data)):
        row = int(np.argwhere(~np.isfinite(data))[0, 0])
        raise ValueError(f"normalization: features contain NaN or inf (first at stacked frame {row}); drop that clip")
    return data


def group_average(std: np.ndarray) -> np.ndarray:
    """Replace each feature group's per-dimension std [263] by the group mean."""
    std = np.array(std, dtype=np.float64)
    if std.shape != (feat.FEATURE_DIM,):
        raise ValueError(f"group_average: expected std of shape ({feat.FEATURE_DIM},), got {std.shape}")
    for group in STD_GROUPS:
        std[group] = std[group].mean()
    return std


def group_std(features: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """HumanML3D group-averaged std [263] (float32) over all frames of all clips."""
    return group_average(_stack(features).std(axis=0)).astype(np.float32)


def compute_mean_std(features: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Dataset statistics as HumanML3D's Mean.npy / Std.npy: per-dim mean and group-averaged std (float32)."""
    data = _stack(features)
    return data.mean(axis=0).astype(np.float32), group_average(data.std(axis=0)).astype(np.float32)


def model_std(std: np.ndarray, feat_bias: float = FEAT_BIAS) -> np.ndarray:
    """MoMask meta std: dataset std with the root (0:4) and contact (259:263) dims divided by feat_bias."""
    if feat_bias <= 0:
        raise ValueError(f"model_std: feat_bias must be positive, got {feat_bias}")
    out = np.array(std, dtype=np.float32)
    if out.shape != (feat.FEATURE_DIM,):
        raise ValueError(f"model_std: expected std of shape ({feat.FEATURE_DIM},), got {out.shape}")
    for group in BIASED_GROUPS:
        out[group] /= feat_bias
    return out


def _save_array_atomic(path: Path, array: np.ndarray) -> None:
    """Write one .npy file via a temporary file in the same folder and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Normalizer:
    """(x - mean) / std over the last dimension, for numpy arrays and torch tensors."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32)
        self.std = np.asarray(self.std, dtype=np.float32)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"Normalizer: mean {self.mean.shape} and std {self.std.shape} must be equal 1-D shapes")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std)) and np.all(self.std > 0)):
            raise ValueError("Normalizer: mean must be finite and std finite and strictly positive")

    def _stats_like(self, x: np.ndarray | torch.Tensor) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
        """Mean and std in x's library, dtype and device; checks the feature dimension."""
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"Normalizer: input has last dimension {x.shape[-1]}, statistics have {self.mean.shape[0]}")
        if isinstance(x, torch.Tensor):
            return (
                torch.as_tensor(self.mean, dtype=x.dtype, device=x.device),
                torch.as_tensor(self.std, dtype=x.dtype, device=x.device),
            )
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return self.mean.astype(dtype), self.std.astype(dtype)

    def normalize(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(x - mean) / std."""
        mean, std = self._stats_like(x)
        return (x - mean) / std

    def denormalize(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """x * std + mean."""
        mean, std = self._stats_like(x)
        return x * std + mean

    def save(self, directory: str | Path) -> None:
        """Write mean.npy and std.npy into directory (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _save_array_atomic(directory / "mean.npy", self.mean)
        _save_array_atomic(directory / "std.npy", self.std)

    @classmethod
    def load(cls, directory: str | Path) -> Normalizer:
        """Read mean.npy and std.npy from directory."""
        directory = Path(directory)
        missing = [name for name in ("mean.npy", "std.npy") if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: missing {', '.join(missing)} (expected normalisation statistics)")
        return cls(np.load(directory / "mean.npy"), np.load(directory / "std.npy"))
