"""`safemotion audit FILE`: where an existing motion uses the codes an LCR model removed for its concept.

The motion (BVH/FBX through `data.mocap_import.load_motion`, or an .npz with `joints` [T, 22, 3] in metres, Y-up, and
optionally `fps`) becomes 263-d HumanML3D features (`motion.features.extract_features`, which also canonicalises it),
is normalised with the model's mean/std, cropped to whole tokens and encoded by the model's RVQ with its ORIGINAL
codebooks (LCR moved the removed rows, so the edited codebook would no longer attract the motions they stood for).
A token is a hit when its base-layer code is removed; the report gives the hit ratio and flag (the model's audit
threshold, calibrated on real validation clips by `safemotion unlearn calibrate --audit`, or else its generation
threshold), merged hit spans in frames and seconds, a per-second timeline (fraction of the tokens starting in that
second that hit) and, for other edited layers, their own ratios. Frames are at the model's frame rate (20 fps).

A screened model (safemotion.unlearn.screening) also runs its motion judge, independent of the codebook: a score for
the whole motion and one per second (`motion_timeline`, the 1-second window starting at each second). An audit has no
prompt, so its documented rule is: flagged when the code-hit ratio reaches the audit threshold or the motion judge
reaches `motion_threshold`; `signals` lists both and `reason` says which fired.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safemotion.data.mocap_import import TARGET_FPS, load_motion
from safemotion.models.model_dir import MotionModels, load_model_dir
from safemotion.motion.features import NUM_JOINTS, extract_features
from safemotion.motion.normalization import Normalizer
from safemotion.unlearn.decision import Signal
from safemotion.unlearn.flagging import assess, hit_token_indices, original_codebook_models
from safemotion.unlearn.record import safety_settings, unlearning_record
from safemotion.unlearn.screening import Screens, load_screens

MOTION_SUFFIXES = (".bvh", ".fbx", ".npz")
DEFAULT_AUDIT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "models" / "safemotion-mini-lcr"
AUDIT_FPS_RANGE = (10.0, 1000.0)  # source frame rates a motion may have (below 10 fps it is not motion capture)
MAX_AUDIT_FRAMES = 4000  # at the model's 20 fps after resampling: 200 s
MAX_NPZ_BYTES = 256 * 1024 * 1024  # uncompressed arrays of an .npz motion


@dataclass
class AuditSpan:
    """Consecutive hit tokens: frames [start_frame, end_frame) and the same in seconds."""

    start_frame: int
    end_frame: int
    start_s: float
    end_s: float


@dataclass
class AuditReport:
    """Removed-code presence in one motion."""

    file: str
    model: str
    concept: str
    fps: float
    source_fps: float
    unit_length: int
    frames: int  # encoded frames (whole tokens)
    seconds: float
    num_tokens: int
    hits: int
    hit_ratio: float
    threshold: float
    calibrated: bool
    flagged: bool
    hit_tokens: list[int]
    spans: list[AuditSpan]
    timeline: list[float]  # per second: fraction of the tokens starting in it that hit
    layer_ratios: dict[str, float]  # RVQ layer -> hit ratio, for every edited layer
    signals: list[Signal] = field(default_factory=list)  # code_hit, and motion on a screened model
    motion_timeline: list[float] | None = None  # per second: the motion judge's score (screened models)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    def to_text(self) -> str:
        """A human-readable summary."""
        verdict = "FLAGGED" if self.flagged else "not flagged"
        calibration = "" if self.calibrated else " (uncalibrated default)"
        lines = [
            f"audit of {self.file} with {self.model} (concept '{self.concept}')",
            f"  {self.seconds:.2f} s: {self.frames} frames at {self.fps:g} fps (source {self.source_fps:g} fps), "
            f"{self.num_tokens} tokens of {self.unit_length} frames",
            f"  removed-code hits: {self.hits}/{self.num_tokens} tokens ({self.hit_ratio:.1%}); threshold "
            f"{self.threshold:.1%}{calibration} -> {verdict}",
            f"  {self.reason}",
        ]
        if len(self.layer_ratios) > 1:
            lines.append("  per layer: " + ", ".join(f"layer {k}: {v:.1%}" for k, v in self.layer_ratios.items()))
        if self.spans:
            lines.append("  spans:")
            lines += [f"    {s.start_s:6.2f}-{s.end_s:6.2f} s  (frames {s.start_frame}-{s.end_frame})"
                      for s in self.spans]
        else:
            lines.append("  spans: none")
        lines.append("  timeline (hit fraction per second):")
        lines += [f"    {second:4d} s  {ratio:5.0%}  {'#' * round(ratio * 20)}"
                  for second, ratio in enumerate(self.timeline)]
        if self.motion_timeline is not None:
            lines.append("  motion judge per second:")
            lines += [f"    {second:4d} s  {score:5.2f}  {'#' * round(score * 20)}"
                      for second, score in enumerate(self.motion_timeline)]
        return "\n".join(lines)


def load_joints(path: str | Path) -> tuple[np.ndarray, float]:
    """(joints [T, 22, 3] at 20 fps, source fps) from a .bvh, .fbx or .npz motion file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MOTION_SUFFIXES:
        raise ValueError(f"{path}: unsupported motion file type {suffix!r}; expected one of "
                         f"{', '.join(MOTION_SUFFIXES)}")
    if suffix != ".npz":
        clip = load_motion(path)
        return clip.joints, clip.source_fps
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such motion file")
    joints, fps = _read_npz(path)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"{path}: 'joints' has shape {list(joints.shape)}, expected [T, {NUM_JOINTS}, 3]")
    if not np.isfinite(joints).all():
        raise ValueError(f"{path}: 'joints' contains NaN or infinite values")
    check_audit_length(len(joints), fps, str(path))
    return resample_joints(joints, fps, TARGET_FPS).astype(np.float32), fps


def _read_npz(path: Path) -> tuple[np.ndarray, float]:
    """(joints as float64, fps) of an .npz; ValueError naming the file for anything unreadable or oversized."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(info.file_size for info in archive.infolist())
        if size > MAX_NPZ_BYTES:
            raise ValueError(f"{path}: {size} bytes of arrays; the limit is {MAX_NPZ_BYTES} "
                             f"({MAX_AUDIT_FRAMES} frames at {TARGET_FPS:g} fps need far less)")
        with np.load(path, allow_pickle=False) as data:
            if "joints" not in data:
                raise ValueError(f"{path}: no 'joints' array (expected joints [T, {NUM_JOINTS}, 3] in metres, Y-up)")
            joints = np.asarray(data["joints"], dtype=np.float64)
            fps = float(np.asarray(data["fps"], dtype=np.float64)) if "fps" in data else TARGET_FPS
    except (zipfile.BadZipFile, OSError, EOFError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: not a readable .npz motion ({type(err).__name__}: {err}); expected an .npz "
                         f"with joints [T, {NUM_JOINTS}, 3] and optionally fps") from None
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable 'joints' or 'fps' ({err}); expected numbers: joints [T, {NUM_JOINTS}, "
                         "3] in metres and a scalar fps") from None
    return joints, fps


def check_audit_length(frames: int, fps: float, where: str) -> None:
    """ValueError unless `fps` is in AUDIT_FPS_RANGE and the motion is at most MAX_AUDIT_FRAMES at 20 fps."""
    low, high = AUDIT_FPS_RANGE
    if not low <= fps <= high:
        raise ValueError(f"{where}: fps {fps:g} is outside {low:g}-{high:g}; give the motion's real frame rate")
    resampled = math.floor((frames - 1) * TARGET_FPS / fps) + 1
    if resampled > MAX_AUDIT_FRAMES:
        raise ValueError(f"{where}: {frames} frames at {fps:g} fps last {frames / fps:.1f} s; audits take at most "
                         f"{MAX_AUDIT_FRAMES / TARGET_FPS:g} s ({MAX_AUDIT_FRAMES} frames at {TARGET_FPS:g} fps): "
                         "cut the motion into parts")


def resample_joints(joints: np.ndarray, fps: float, target_fps: float) -> np.ndarray:
    """Joint positions linearly interpolated from `fps` to `target_fps` (same duration)."""
    if fps == target_fps or len(joints) < 2:
        return joints
    times = np.arange(len(joints)) / fps
    new_times = np.arange(0.0, times[-1] + 1e-9, 1.0 / target_fps)
    flat = joints.reshape(len(joints), -1)
    out = np.stack([np.interp(new_times, times, flat[:, k]) for k in range(flat.shape[1])], axis=1)
    return out.reshape(len(new_times), *joints.shape[1:])


def encode_joints(models: MotionModels, joints: np.ndarray) -> np.ndarray:
    """RVQ code ids (n, num_quantizers) of joints [T, 22, 3] at the model's frame rate (whole tokens only)."""
    return encode_features(models, extract_features(np.asarray(joints, dtype=np.float64)))


@torch.inference_mode()
def encode_features(models: MotionModels, features: np.ndarray) -> np.ndarray:
    """RVQ code ids (n, num_quantizers) of 263-d features [T, 263] (whole tokens only)."""
    unit = models.config.unit_length
    tokens = len(features) // unit
    if tokens < 1:
        raise ValueError(f"the motion is too short to encode: {len(features)} feature frames, fewer than one token "
                         f"of {unit}")
    normalized = Normalizer(models.mean, models.std).normalize(features[:tokens * unit].astype(np.float32))
    device = next(models.vq.parameters()).device
    ids, _ = models.vq.encode(torch.from_numpy(normalized)[None].to(device))
    return ids[0].cpu().numpy()


def audit_joints(models: MotionModels, original: MotionModels, joints: np.ndarray, file: str = "", model: str = "",
                 source_fps: float = TARGET_FPS, screens: Screens | None = None) -> AuditReport:
    """Audit joints [T, 22, 3] with an LCR model (`models`, for its record), its original-codebook copy and, for a
    screened model, its motion judge."""
    record = unlearning_record(models.config)
    if record is None or not record.removed_codes:
        raise ValueError(f"{model or 'the model'}: no removed codes to look for; audit with a model made by "
                         "`safemotion unlearn lcr`")
    threshold, calibrated = safety_settings(models.config).audit()
    config = models.config
    unit, fps = config.unit_length, float(config.fps)
    ids = encode_joints(original, joints)
    base = record.removed_codes.get(0, [])
    result = assess(ids[:, 0], base, unit, threshold, concept=record.concept, calibrated=calibrated)
    hits = np.asarray(result.hit_tokens, dtype=np.int64)
    num_tokens = len(ids)
    frames = num_tokens * unit
    starts = np.arange(num_tokens) * unit / fps
    seconds = math.ceil(frames / fps - 1e-9)
    timeline = []
    for second in range(seconds):
        in_second = np.flatnonzero((starts >= second) & (starts < second + 1))
        timeline.append(float(np.isin(in_second, hits).mean()) if in_second.size else 0.0)
    layer_ratios = {str(layer): len(hit_token_indices(ids[:, layer], codes)) / num_tokens
                    for layer, codes in sorted(record.removed_codes.items())}
    signals = [Signal("code_hit", result.hit_ratio, threshold, result.flagged)]
    motion_timeline = None
    if screens is not None:
        encoded = joints[:frames]
        score = screens.motion.score(encoded)
        signals.append(Signal("motion", score, screens.settings.motion_threshold,
                              score >= screens.settings.motion_threshold))
        motion_timeline = screens.motion.per_second(encoded)
    fired = [s for s in signals if s.fired]
    reason = ("flagged by the " + " and the ".join(s.describe() for s in fired) if fired
              else "not flagged: " + " and ".join(s.describe() for s in signals))
    return AuditReport(
        file=file, model=model, concept=record.concept, fps=fps, source_fps=float(source_fps), unit_length=unit,
        frames=frames, seconds=frames / fps, num_tokens=num_tokens, hits=len(hits), hit_ratio=result.hit_ratio,
        threshold=threshold, calibrated=calibrated, flagged=bool(fired),
        hit_tokens=result.hit_tokens,
        spans=[AuditSpan(start, end, start / fps, end / fps) for start, end in result.spans],
        timeline=timeline, layer_ratios=layer_ratios, signals=signals, motion_timeline=motion_timeline,
        reason=reason,
    )


def audit_file(path: str | Path, model_dir: str | Path, device: str = "cpu") -> AuditReport:
    """Audit a motion file with an LCR model directory (the file is checked first)."""
    joints, source_fps = load_joints(path)
    models = load_model_dir(model_dir, device=device)
    if unlearning_record(models.config) is None or not unlearning_record(models.config).removed_codes:
        raise ValueError(f"{model_dir}: this model has no removed codes; audit with a model made by "
                         "`safemotion unlearn lcr`")
    screens = load_screens(model_dir, models.config)
    original = original_codebook_models(models, model_dir)
    return audit_joints(models, original, joints, str(path), str(model_dir), source_fps, screens)
