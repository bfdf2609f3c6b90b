"""Text-to-motion generation: prompts → token lengths → base and residual token ids → features → joints → SMPL pose.

    generator = Generator.from_dir("path/to/model_dir")
    motions = generator.generate([GenerationRequest("a person walks forward", seconds=4, seed=1, variations=3)])
    save_npz(motions[0], "walk.npz"); save_bvh(motions[0], "walk.bvh")

Reproducibility: variation k of a request with seed s is generated from seed s + k alone (its own torch.Generator),
so it equals variation 0 of the same prompt with seed s + k, whatever else is in the batch. Samples are batched in
order of token length; every motion is decoded by the VQ decoder without padding.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from safemotion.data.bvh import Bvh, write_bvh
from safemotion.base_decoding import decode_base_layer
from safemotion.decoding import INT8, PRECISIONS, SKIP_ID, SamplingConfig, decode_residual, sample_token_lengths
from safemotion.models.model_dir import MotionModels, load_model_dir
from safemotion.models.text_encoders import TextEncoder, load_text_encoder
from safemotion.motion import rotations as rot
from safemotion.motion import skeleton
from safemotion.motion.features import recover_from_ric
from safemotion.motion.foot_contact import FootCleanupReport, clean_feet
from safemotion.motion.normalization import Normalizer
from safemotion.motion.seams import SeamReport
from safemotion.motion.smpl import SmplMotion, joints_to_smpl

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "models" / "safemotion-mini"
MAX_PROMPT_CHARS = 300
SECONDS_RANGE = (0.5, 9.8)
VARIATIONS_RANGE = (1, 16)
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt; `seconds` None lets the length estimator choose; `variations` motions from seeds seed..seed+k-1;
    `foot_cleanup` pins planted feet and grounds the motion after decoding (motion.foot_contact)."""

    prompt: str
    seconds: float | None = None
    seed: int = 0
    variations: int = 1
    foot_cleanup: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field and its allowed range."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt is empty; describe the motion in 1-300 characters")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt has {len(self.prompt)} characters; allowed range is 1-{MAX_PROMPT_CHARS}")
        if self.seconds is not None:
            low, high = SECONDS_RANGE
            if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds)
                    and low <= self.seconds <= high):
                raise ValueError(f"seconds is {self.seconds}; allowed range is {low}-{high} (or None to estimate)")
        low, high = VARIATIONS_RANGE
        if isinstance(self.variations, bool) or not isinstance(self.variations, int) or not low <= self.variations <= high:
            raise ValueError(f"variations is {self.variations}; allowed range is {low}-{high}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63 - high:
            raise ValueError(f"seed is {self.seed}; allowed range is 0-{2**63 - high - 1}")
        if not isinstance(self.foot_cleanup, bool):
            raise ValueError(f"foot_cleanup is {self.foot_cleanup!r}; use true or false")


@dataclass
class GeneratedMotion:
    """One generated motion with the tokens that produced it."""

    prompt: str
    seed: int  # the seed that regenerates exactly this motion as variation 0
    variation: int  # index within its request
    fps: float
    tokens: np.ndarray  # (n, num_quantizers) int64 code ids; -1 = skipped residual code
    features: np.ndarray  # (4n, 263) float32 HumanML3D features as decoded, not normalised
    joints: np.ndarray  # (4n, 22, 3) float32 joint positions in metres, Y-up (after the foot clean-up when on)
    smpl: SmplMotion | None  # SMPL pose fitted to the joints (None when generated with smpl=False)
    length_from: str  # "request", "estimator" or "end_token" (a generator that predicts its length)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    foot_cleanup: FootCleanupReport | None = None  # what the foot clean-up did to `joints`; None when it was off
    seams: SeamReport | None = None  # an edit's seams and their jumps (safemotion.edit); None for a generation

    @property
    def base_tokens(self) -> np.ndarray:
        """Base-layer code ids (n,), the ones the masked transformer chose."""
        return self.tokens[:, 0]

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return self.joints.shape[0]

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.num_frames / self.fps


def seconds_to_tokens(seconds: float, fps: float, unit_length: int, max_tokens: int) -> int:
    """Token count for a duration: frames floored to a multiple of unit_length, clamped to [1, max_tokens]."""
    frames = math.floor(seconds * fps + 1e-6)
    return min(max(frames // unit_length, 1), max_tokens)


def pick_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_is_native(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (CUDA with bf16, a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def require_native_bf16(device: torch.device) -> None:
    """Raise ValueError where `device` would emulate bfloat16 (several times slower than float32, not faster)."""
    if not bf16_is_native(device):
        raise ValueError(f"precision bf16 needs a GPU with bfloat16 or a CPU with AVX512-BF16 or AMX; {device} has "
                         "neither, so it would run slower than float32: use precision fp32")


def with_precision(models: MotionModels, precision: str, device: torch.device) -> MotionModels:
    """`models` with both token transformers cast in place to `precision`; the VQ and length estimator stay float32.

    bf16 is refused where the device would emulate it (several times slower than float32, not faster); int8
    (dynamically quantized encoder linears, `encoder_inference.Int8Linears`) runs on the CPU only.
    """
    if precision == INT8:
        if device.type != "cpu":
            raise ValueError(f"precision int8 runs on the CPU only, not {device}; use fp32 or bf16 there")
        models.mask_transformer.quantize_int8()
        models.residual_transformer.quantize_int8()
        return models
    dtype = PRECISIONS[precision]
    if dtype == torch.bfloat16:
        require_native_bf16(device)
    models.mask_transformer.to(dtype)
    models.residual_transformer.to(dtype)
    return models


class Generator:
    """Text-to-motion generation with a loaded model directory."""

    def __init__(self, models: MotionModels, text_encoder: TextEncoder | None, sampling: SamplingConfig | None = None,
                 device: str | torch.device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE):
        """`text_encoder` may be None when only precomputed features are used (generate_from_features)."""
        self.device = pick_device(device) if isinstance(device, str) else device
        self.sampling = sampling or SamplingConfig()
        self.sampling.validate()
        self.models = with_precision(models.to(self.device).eval(), self.sampling.precision, self.device)
        self.text_encoder = text_encoder
        self.batch_size = batch_size
        self.normalizer = Normalizer(models.mean, models.std)
        config = models.config
        self.fps = float(config.fps)
        self.unit_length = config.unit_length
        self.max_tokens = config.max_motion_length // config.unit_length
        if text_encoder is not None and text_encoder.dim != config.mask_transformer.text_dim:
            raise ValueError(f"text encoder {text_encoder.name!r} gives {text_encoder.dim}-d features but the model "
                             f"expects {config.mask_transformer.text_dim}-d ({config.text_encoder!r})")

    @classmethod
    def from_dir(cls, path: str | Path = DEFAULT_MODEL_DIR, device: str = "cpu", sampling: SamplingConfig | None = None,
                 clip_weights: Path | None = None, clip_vocab: Path | None = None) -> Generator:
        """Load a model directory and its text encoder (CLIP models need the user's weights and merges files)."""
        path = Path(path)
        if not path.exists():
            hint = ("the embedded model has not been trained into this installation yet; "
                    if path == DEFAULT_MODEL_DIR else "")
            raise FileNotFoundError(f"{path}: model directory not found; {hint}pass --model with a model directory "
                                    "(from `safemotion train` or `safemotion import-momask`)")
        resolved = pick_device(device)
        models = load_model_dir(path, device=resolved)
        encoder = load_text_encoder(models.config.text_encoder, resolved, clip_weights, clip_vocab)
        return cls(models, encoder, sampling, resolved)

    @property
    def chooses_length(self) -> bool:
        """Whether a request may leave the length out (a length estimator, or a generator predicting its length)."""
        return self.models.length_estimator is not None or self.models.mask_transformer.predicts_length

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Text features (B, text_dim) on the generator's device."""
        if self.text_encoder is None:
            raise ValueError("this Generator has no text encoder; use generate_from_features with precomputed features")
        return self.text_encoder.encode(list(prompts)).float().to(self.device)

    def generate(self, requests: list[GenerationRequest], smpl: bool = True,
                 prompt_features: dict[str, Tensor] | None = None) -> list[GeneratedMotion]:
        """All variations of all requests, request by request; invalid requests raise ValueError before any work.
        `prompt_features` (prompt → its text features, from `encode_prompts`) skips encoding those prompts again."""
        if not requests:
            raise ValueError("requests is empty; pass at least one GenerationRequest")
        for index, request in enumerate(requests):
            try:
                request.validate()
            except ValueError as err:
                raise ValueError(f"request {index}: {err}") from None
        unique = list(dict.fromkeys(r.prompt for r in requests))
        known = prompt_features or {}
        missing = [p for p in unique if p not in known]
        encoded = dict(zip(missing, self.encode_prompts(missing))) if missing else {}
        features = torch.stack([known[p].to(self.device) if p in known else encoded[p] for p in unique])
        rows, seeds, lengths, prompts, variations, cleanup = [], [], [], [], [], []
        for request in requests:
            tokens = None if request.seconds is None else seconds_to_tokens(
                request.seconds, self.fps, self.unit_length, self.max_tokens)
            for k in range(request.variations):
                rows.append(unique.index(request.prompt))
                seeds.append(request.seed + k)
                lengths.append(tokens)
                prompts.append(request.prompt)
                variations.append(k)
                cleanup.append(request.foot_cleanup)
        motions = self.generate_from_features(features[rows], seeds, lengths, smpl=smpl, prompts=prompts,
                                              foot_cleanup=cleanup)
        for motion, variation in zip(motions, variations):
            motion.variation = variation
        return motions

    def generate_from_features(self, features: Tensor, seeds: list[int], token_lengths: list[int | None],
                               smpl: bool = True, prompts: list[str] | None = None,
                               foot_cleanup: bool | list[bool] = True) -> list[GeneratedMotion]:
        """Motions for precomputed text features (N, text_dim), one seed and token length (None: estimate) each;
        `foot_cleanup` for all or one per row."""
        cleanup = _cleanup_flags(foot_cleanup, features.shape[0], "feature rows")  # checked before any work
        tokens, length_from = self.token_arrays(features, seeds, token_lengths)
        return self.motions_from_tokens(tokens, seeds, length_from, smpl, prompts, cleanup)

    def token_arrays(self, features: Tensor, seeds: list[int],
                     token_lengths: list[int | None]) -> tuple[list[np.ndarray], list[str]]:
        """The (n, Q) token array of every row of precomputed features (N, text_dim), one seed and token length
        (None: estimate) each, and where each length came from."""
        count = features.shape[0]
        if not len(seeds) == len(token_lengths) == count:
            raise ValueError(f"got {count} feature rows, {len(seeds)} seeds and {len(token_lengths)} lengths")
        features = features.float().to(self.device)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        lengths, length_from = self._token_lengths(features, generators, token_lengths)
        order = sorted(range(count), key=lambda i: lengths[i])
        tokens: list[np.ndarray | None] = [None] * count
        for start in range(0, count, self.batch_size):
            batch = order[start:start + self.batch_size]
            ids, chosen = self.sample_tokens(features[batch], torch.tensor([lengths[i] for i in batch]),
                                             [generators[i] for i in batch])
            for row, i in enumerate(batch):
                tokens[i] = ids[row, :int(chosen[row])].cpu().numpy()
        return tokens, length_from

    def motions_from_tokens(self, tokens: list[np.ndarray], seeds: list[int], length_from: list[str],
                            smpl: bool = True, prompts: list[str] | None = None,
                            foot_cleanup: bool | list[bool] = True) -> list[GeneratedMotion]:
        """Decode token arrays (from `token_arrays`, possibly of another model with the same transformers) with this
        model's VQ into motions; `foot_cleanup` for all or one per motion."""
        cleanup = _cleanup_flags(foot_cleanup, len(tokens), "token arrays")
        motion_features = self.decode_tokens(tokens)
        results = []
        for i in range(len(tokens)):
            joints, report = recover_from_ric(motion_features[i]), None
            if cleanup[i]:
                cleaned = clean_feet(joints, motion_features[i], self.fps)
                joints, report = cleaned.joints, cleaned.report
            results.append(GeneratedMotion(
                prompt="" if prompts is None else prompts[i], seed=seeds[i], variation=0, fps=self.fps,
                tokens=tokens[i], features=motion_features[i], joints=joints,
                smpl=joints_to_smpl(joints, fps=self.fps) if smpl else None,
                length_from=length_from[i], sampling=self.sampling, foot_cleanup=report,
            ))
        return results

    def _token_lengths(self, features: Tensor, generators: list[torch.Generator],
                       requested: list[int | None]) -> tuple[list[int], list[str]]:
        """Requested lengths clamped to [1, max_tokens]; missing ones from the length estimator, or 0 (decided while
        decoding) for a generator that predicts its length."""
        missing = [i for i, n in enumerate(requested) if n is None]
        lengths = [min(max(int(n), 1), self.max_tokens) if n is not None else 0 for n in requested]
        if self.models.mask_transformer.predicts_length:
            return lengths, ["request" if n is not None else "end_token" for n in requested]
        if missing:
            estimator = self.models.length_estimator
            if estimator is None:
                raise ValueError("this model has no length estimator; give the length in seconds")
            drawn = sample_token_lengths(estimator, features[missing], [generators[i] for i in missing],
                                         self.max_tokens)
            for i, n in zip(missing, drawn.tolist()):
                lengths[i] = n
        return lengths, ["request" if n is not None else "estimator" for n in requested]

    def sample_tokens(self, features: Tensor, lengths: Tensor, generators: list[torch.Generator],
                      kept: Tensor | None = None, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """All code layers (B, max length, Q) for one batch (−1 at padding and skipped residual codes) and the token
        lengths (B,); a length 0 is chosen by the generator.

        Temporal inpainting: where `keep` (B, max(lengths)) is True the ids of `kept` (B, max(lengths), Q) are kept in
        every layer and the others are decoded around them.
        """
        base_kept = None if keep is None else torch.where(keep, kept[..., 0], SKIP_ID)
        base, lengths = decode_base_layer(self.models.mask_transformer, features, lengths, generators, self.sampling,
                                          self.max_tokens, base_kept)
        ids = decode_residual(self.models.residual_transformer, base, features, lengths, generators, self.sampling,
                              kept, keep)
        return ids, lengths

    @torch.inference_mode()
    def decode_tokens(self, tokens: list[np.ndarray]) -> list[np.ndarray]:
        """Un-normalised features (4n, 263) for each (n, Q) token array; equal lengths are decoded together."""
        out: list[np.ndarray | None] = [None] * len(tokens)
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(tokens):
            by_length.setdefault(len(ids), []).append(i)
        for group in by_length.values():
            for start in range(0, len(group), self.batch_size):
                chunk = group[start:start + self.batch_size]
                ids = torch.from_numpy(np.stack([tokens[i] for i in chunk])).to(self.device)
                decoded = self.normalizer.denormalize(self.models.vq.forward_decoder(ids).float())
                for row, i in enumerate(chunk):
                    out[i] = decoded[row].cpu().numpy()
        return out


def _cleanup_flags(foot_cleanup: bool | list[bool], count: int, what: str) -> list[bool]:
    cleanup = [foot_cleanup] * count if isinstance(foot_cleanup, bool) else list(foot_cleanup)
    if len(cleanup) != count:
        raise ValueError(f"got {count} {what} and {len(cleanup)} foot_cleanup flags")
    return cleanup


# ---------------------------------------------------------------------------------------------- writers

def output_paths(path: str | Path, count: int) -> list[Path]:
    """`count` output files: the path itself for one, else name_1.ext ... name_count.ext."""
    path = Path(path)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{k}{path.suffix}") for k in range(1, count + 1)]


def save_npz(motion: GeneratedMotion, path: str | Path, safety: dict | None = None) -> Path:
    """Write joints, features, tokens, SMPL pose and metadata (JSON string, with the safety record) to an .npz file,
    atomically."""
    path = Path(path)
    metadata = {
        "prompt": motion.prompt, "seed": motion.seed, "variation": motion.variation, "fps": motion.fps,
        "frames": motion.num_frames, "length_from": motion.length_from, "sampling": vars(motion.sampling),
        "joint_names": list(skeleton.SMPL22_NAMES), "smpl_joint_names": list(skeleton.SMPL24_NAMES),
        "safety": safety,
        "foot_cleanup": {"applied": motion.foot_cleanup is not None,
                         **(motion.foot_cleanup.to_dict() if motion.foot_cleanup is not None else {})},
        "seams": None if motion.seams is None else motion.seams.to_dict(),
    }
    arrays = {
        "joints": motion.joints.astype(np.float32),
        "features": motion.features.astype(np.float32),
        "tokens": motion.tokens.astype(np.int64),
        "base_tokens": motion.base_tokens.astype(np.int64),
        "fps": np.float32(motion.fps),
        "metadata": np.array(json.dumps(metadata)),
    }
    if motion.smpl is not None:
        arrays.update(smpl_pose=motion.smpl.pose.astype(np.float32), smpl_transl=motion.smpl.transl.astype(np.float32),
                      smpl_rest_joints=motion.smpl.rest_joints.astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def smpl_to_bvh(smpl: SmplMotion, rotation_order: str = "ZYX") -> Bvh:
    """BVH on the 24-joint SMPL skeleton: rest offsets from smpl.rest_joints, local rotations from the pose, metres."""
    parents = list(skeleton.SMPL24_PARENTS)
    rest = np.asarray(smpl.rest_joints, dtype=np.float64)
    offsets = np.zeros_like(rest)
    offsets[1:] = rest[1:] - rest[parents[1:]]
    angles = rot.matrix_to_euler(rot.axis_angle_to_matrix(smpl.pose.astype(np.float64)), rotation_order)
    angles = np.unwrap(angles, period=360.0, axis=0)
    rotation_channels = tuple(f"{axis}rotation" for axis in rotation_order)
    channels = [("Xposition", "Yposition", "Zposition") + rotation_channels]
    channels += [rotation_channels] * (len(parents) - 1)
    root = rest[0] + smpl.transl
    motion = np.concatenate([root, angles.reshape(len(angles), -1)], axis=1)
    children = {p for p in parents if p >= 0}
    end_sites = {j: 0.5 * offsets[j] for j in range(len(parents)) if j not in children}
    return Bvh(names=list(skeleton.SMPL24_NAMES), parents=parents, offsets=offsets, channels=channels,
               frame_time=1.0 / smpl.fps, motion=motion, end_sites=end_sites)


def save_bvh(motion: GeneratedMotion, path: str | Path) -> Path:
    """Write the motion's SMPL pose as a BVH file on the SMPL skeleton (metres, Y-up), atomically."""
    smpl = motion.smpl if motion.smpl is not None else joints_to_smpl(motion.joints, fps=motion.fps)
    write_bvh(smpl_to_bvh(smpl), path)
    return Path(path)
