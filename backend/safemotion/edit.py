"""Edit takes with the masked token model: regenerate frame ranges, extend a take, generate an in-between.

    editor = Editor(SafeGenerator.from_dir("path/to/model_dir"))
    source = load_source("walk.npz")
    results = editor.edit(source, [(40, 80)], "a person jumps", seed=1, variations=3)
    results = editor.extend(source, 2.0, "then sits down")             # at="start" prepends
    results = editor.inbetween(walk, wave, 1.5, "a person walks and stops")

The source (joints [T, 22, 3] in metres, Y-up, or 263-d features, at the model's frame rate) is encoded by the VQ
(with the original codebooks of an LCR model, like `safemotion audit`, so the ids are those the transformers speak);
joints go through extract_features with ground_first (the take's own floor kept through the retarget: of the 212
removed-code tokens of 8 sword slashes decoded by the mini model, 104 re-encode to removed codes instead of 59). Its
last T mod 4 frames (less than one token) are dropped. Each span becomes a token range widened by a margin of whole
tokens; the base ids inside are masked and decoded by the masked transformer with every other id visible and
classifier-free guidance on the prompt (MoMask's temporal inpainting), the residual layers of those tokens are
regenerated with the kept layers as history, and the tokens are decoded (under `allow` with the original codebooks).
An extension or in-between shows the transformer only EditSettings.context_tokens kept tokens next to its new part:
with whole takes visible it continues them and ignores the prompt.

Assembly in joint space: the decoded frames get the source's bone lengths (each bone keeps its direction), and are placed in the source's world by a
yaw-and-translation fit over the blend window on each side of a region (interpolated across the region when both
sides are kept, so the edited part meets the kept frames at both ends). Inside a blend window the source and the
decoded motion are cross-faded in joint-rotation space (every bone turned along the shortest arc between its two
directions with smoothstep weights, root position and bone lengths interpolated, the skeleton rebuilt from the root). Every other kept frame is the source's own array, bit for bit.
`inbetween` keeps all of `a`, and all of `b` moved rigidly (yaw and translation) so that it continues the transition.
Seams: the masked transformer often starts the prompt's action on a region's first or last token (a jump taking off
right at the seam, faster than a cross-fade can hide). When a seam's joint-velocity jump (safemotion.motion.seams)
exceeds EditSettings.seam_limit, the token next to it is masked again and re-sampled with everything else of the
result visible, in seeded tries (EditSettings.seam_retries); the try with the smallest worst seam is kept. Every
result carries its seams (GeneratedMotion.seams, a SeamReport: each seam's frame and jump against the limit); a seam
still over the limit after the tries is named in its warnings (the CLI's record and .npz metadata, the server's
response, the add-on's take).

Safety: every base id of the result, kept ones included, goes through SafeGenerator.review, the review generations
get, so a take that used removed codes stays flagged after an edit and spans are in the result's frames. A take that
SafeMotion decoded carries the base ids it was decoded from (`SourceMotion.base_tokens`: the .npz of generate and
edit, the server's `tokens`, the add-on's take record); re-encoding its joints finds only some of them (the decoder's
motion is not what the VQ would encode it to), so a kept token hits when EITHER its carried id or its re-encoded id is
a removed code, and the result keeps the carried ids as its kept tokens' base ids (an edit of the edit still sees
them). Carried ids can only add hits; the transformers see the re-encoded ids, which describe the frames as they are.
Seeds and variations are those of generation: variation k is decoded from seed + k alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from safemotion.data.mocap_import import load_motion
from safemotion.eval.adherence import facing
from safemotion.generate import SECONDS_RANGE, GeneratedMotion, GenerationRequest, seconds_to_tokens
from safemotion.motion import skeleton
from safemotion.motion.seams import SeamReport, seam_pairs
from safemotion.motion.features import (
    FEATURE_DIM,
    NUM_JOINTS,
    extract_features,
    recover_from_ric,
)
from safemotion.motion.smpl import joints_to_smpl
from safemotion.safe_generation import Generated, SafeGenerator
from safemotion.unlearn.audit import encode_features
from safemotion.unlearn.policies import DEFAULT_POLICY, check_policy

SOURCE_SUFFIXES = (".npz", ".bvh")
FPS_TOLERANCE = 1e-3
MAX_SOURCE_FRAMES = 20_000
_PARENTS = np.array(skeleton.SMPL22_PARENTS)


@dataclass(frozen=True)
class EditSettings:
    """How spans become token ranges and how the seams are blended."""

    margin_tokens: int = 1  # whole tokens added on each side of a span
    blend_frames: int = 8  # kept frames on each side of a region that are cross-faded into the edit
    # Kept tokens an extension or in-between sees on each side of its new part. With whole takes visible the masked
    # transformer continues them and ignores the prompt ("raises both hands" after a 6 s walk: 0/10 seeds with both
    # wrists over the head, between a walk and a wave: 1/10; with 8 tokens, 1.6 s: 10/10 and 8/10).
    context_tokens: int = 8
    # A seam whose joint-velocity jump (safemotion.motion.seams) exceeds seam_limit gets the region's tokens next to it
    # re-sampled, the rest of the result kept as context, up to seam_retries times (each try seeded by the variation's
    # seed and the try's number); the try with the smallest worst seam is kept. The masked transformer often starts
    # the prompt's action (a jump's take-off, its landing) on the region's first or last token, right on the seam.
    # 0.119 m/frame²: the 95th percentile of the velocity jumps of the real clips of safemotion-v1's training split.
    seam_limit: float = 0.119
    seam_retries: int = 8
    seam_tokens: int = 1  # tokens re-sampled at an over-limit seam

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range setting."""
        if not 0 <= self.margin_tokens <= 8:
            raise ValueError(f"margin_tokens is {self.margin_tokens}; allowed range is 0-8")
        if not 1 <= self.blend_frames <= 32:
            raise ValueError(f"blend_frames is {self.blend_frames}; allowed range is 1-32")
        if not 1 <= self.context_tokens <= 48:
            raise ValueError(f"context_tokens is {self.context_tokens}; allowed range is 1-48")
        if not (math.isfinite(self.seam_limit) and self.seam_limit > 0):
            raise ValueError(f"seam_limit is {self.seam_limit}; it must be a positive number of metres per frame²")
        if not 0 <= self.seam_retries <= 8:
            raise ValueError(f"seam_retries is {self.seam_retries}; allowed range is 0-8")
        if not 1 <= self.seam_tokens <= 4:
            raise ValueError(f"seam_tokens is {self.seam_tokens}; allowed range is 1-4")


@dataclass(frozen=True)
class SourceMotion:
    """A motion to edit: joints [T, 22, 3] (metres, Y-up) and, when known, its 263-d features [T, 263] and the
    base-layer ids [T // unit] SafeMotion decoded it from (checked against the model by check_base_tokens when
    edited, unless with_base_tokens checked them for that model already)."""

    joints: np.ndarray
    fps: float
    features: np.ndarray | None = None
    name: str = "source"
    base_tokens: np.ndarray | None = None
    tokens_checked_for: tuple[int, int] | None = None  # (unit length, base codes) with_base_tokens checked them for

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return len(self.joints)


def source_from_joints(joints: np.ndarray, fps: float, name: str = "source",
                       base_tokens: np.ndarray | None = None) -> SourceMotion:
    """A checked SourceMotion from joint positions [T, 22, 3] in metres, Y-up (and the base ids it was decoded
    from)."""
    joints = np.asarray(joints)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"{name}: joints have shape {list(joints.shape)}; expected [T, {NUM_JOINTS}, 3] (SMPL-22 "
                         "joints in metres, Y-up)")
    _check_frames(len(joints), name)
    if not np.isfinite(joints).all():
        raise ValueError(f"{name}: joints contain NaN or infinite values")
    return SourceMotion(joints=joints.astype(np.float32), fps=_check_fps(fps, name), name=name,
                        base_tokens=base_tokens)


def source_from_features(features: np.ndarray, fps: float, name: str = "source",
                         base_tokens: np.ndarray | None = None) -> SourceMotion:
    """A checked SourceMotion from un-normalised 263-d HumanML3D features [T, 263] (joints recovered from them; and the
    base ids it was decoded from)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise ValueError(f"{name}: features have shape {list(features.shape)}; expected [T, {FEATURE_DIM}] "
                         "(HumanML3D features, not normalised)")
    _check_frames(len(features), name)
    if not np.isfinite(features).all():
        raise ValueError(f"{name}: features contain NaN or infinite values")
    features = features.astype(np.float32)
    return SourceMotion(joints=recover_from_ric(features), fps=_check_fps(fps, name), features=features, name=name,
                        base_tokens=base_tokens)


def load_source(path: str | Path) -> SourceMotion:
    """A SourceMotion from a SafeMotion .npz (features when present, else joints; `fps`; the base ids of
    `base_tokens` [n] or `tokens` [n, layers] when present) or a .bvh file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SOURCE_SUFFIXES:
        raise ValueError(f"{path}: unknown source format {suffix!r}; give a .npz (from `safemotion generate`, or "
                         "with a 'joints' [T, 22, 3] array) or a .bvh file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such motion file")
    if suffix == ".bvh":
        clip = load_motion(path)
        return source_from_joints(clip.joints, clip.source_fps, str(path))
    with np.load(path, allow_pickle=False) as data:
        if "joints" not in data and "features" not in data:
            raise ValueError(f"{path}: no 'joints' [T, 22, 3] or 'features' [T, 263] array")
        fps = float(data["fps"]) if "fps" in data else 20.0
        ids = _carried_ids(data, path)
        if "features" in data and "joints" in data and len(data["features"]) == len(data["joints"]):
            source = source_from_features(data["features"], fps, str(path))
            return SourceMotion(joints=source_from_joints(data["joints"], fps, str(path)).joints, fps=source.fps,
                                features=source.features, name=str(path), base_tokens=ids)
        if "joints" in data:
            return source_from_joints(data["joints"], fps, str(path), ids)
        return source_from_features(data["features"], fps, str(path), ids)


def _carried_ids(data: np.lib.npyio.NpzFile, path: Path) -> np.ndarray | None:
    """The base ids an .npz take carries: `base_tokens` [n], else column 0 of `tokens` [n, layers], else None."""
    if "base_tokens" in data:
        return data["base_tokens"]
    if "tokens" not in data:
        return None
    tokens = data["tokens"]
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(f"{path}: 'tokens' has shape {list(tokens.shape)}; expected [tokens, layers] code ids")
    return tokens[:, 0]


def check_base_tokens(ids: np.ndarray, frames: int, unit: int, codes: int, name: str = "source") -> np.ndarray:
    """The base ids a take carries as int64 [frames // unit]; ValueError naming a wrong shape, type, count or id."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{name}: base_tokens have shape {list(ids.shape)}; expected [{frames // unit}] base-layer "
                         "code ids (column 0 of the take's tokens)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: base_tokens are {ids.dtype}; expected integer code ids")
    if len(ids) != frames // unit:
        raise ValueError(f"{name}: {len(ids)} base_tokens for {frames} frames; a take of {frames} frames has "
                         f"{frames // unit} tokens of {unit} frames. Send the ids of this very take (column 0 of "
                         "its `tokens`), or none if the take was changed since it was decoded")
    bad = np.flatnonzero((ids < 0) | (ids >= codes))
    if len(bad):
        raise ValueError(f"{name}: base_tokens[{bad[0]}] is {ids[bad[0]]}; the model's base codes are 0-{codes - 1}")
    return ids.astype(np.int64)


def with_base_tokens(source: SourceMotion, ids: np.ndarray, unit: int, codes: int) -> SourceMotion:
    """`source` carrying the base ids it was decoded from, checked once here (check_base_tokens) for a model of
    `unit`-frame tokens and `codes` base codes: an Editor of that model takes them as they are."""
    checked = check_base_tokens(ids, source.num_frames, unit, codes, source.name)
    return replace(source, base_tokens=checked, tokens_checked_for=(unit, codes))


def _check_frames(frames: int, name: str) -> None:
    if not 1 <= frames <= MAX_SOURCE_FRAMES:
        raise ValueError(f"{name}: {frames} frames; allowed range is 1-{MAX_SOURCE_FRAMES}")


def _check_fps(fps: float, name: str) -> float:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"{name}: fps is {fps}; it must be a positive number")
    return float(fps)


def check_spans(spans: list[tuple[int, int]], frames: int, editable: int, unit: int) -> list[tuple[int, int]]:
    """The spans [start, end) as sorted int pairs; ValueError names an empty, outside, too short or overlapping one."""
    if not spans:
        raise ValueError("no frame span given; name the frames to regenerate, e.g. 40:80")
    checked = []
    for index, span in enumerate(spans, start=1):
        try:
            start, end = (int(v) for v in span)
        except (TypeError, ValueError):
            raise ValueError(f"span {index} is {span!r}; give two frame numbers [start, end)") from None
        if start != span[0] or end != span[1]:
            raise ValueError(f"span {index} is {span!r}; frame numbers must be whole numbers")
        if end <= start:
            raise ValueError(f"span {index} ({start}:{end}) is empty; the end frame is exclusive and must be after "
                             "the start")
        if start < 0 or end > frames:
            raise ValueError(f"span {index} ({start}:{end}) lies outside the take, which has frames 0:{frames}")
        if end - start < unit:
            raise ValueError(f"span {index} ({start}:{end}) is {end - start} frame(s), shorter than one token "
                             f"({unit} frames); widen it")
        if end > editable:
            raise ValueError(f"span {index} ({start}:{end}) reaches into the take's last {frames - editable} "
                             f"frame(s), which are less than one token and cannot be regenerated; end it at "
                             f"{editable} or earlier (or use extend)")
        checked.append((start, end))
    checked.sort()
    for (a0, a1), (b0, b1) in zip(checked, checked[1:]):
        if b0 < a1:
            raise ValueError(f"spans {a0}:{a1} and {b0}:{b1} overlap; merge them into one span")
    return checked


def token_regions(spans: list[tuple[int, int]], num_tokens: int, unit: int, margin: int) -> list[tuple[int, int]]:
    """Token ranges [t0, t1) covering the spans plus `margin` whole tokens each side, clipped and merged."""
    regions: list[tuple[int, int]] = []
    for start, end in spans:
        t0, t1 = max(start // unit - margin, 0), min(-(-end // unit) + margin, num_tokens)
        if regions and t0 <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(t1, regions[-1][1]))
        else:
            regions.append((t0, t1))
    return regions


# ---------------------------------------------------------------------------------------------- joint-space assembly

@dataclass(frozen=True)
class Placement:
    """A yaw about +Y (radians) then a translation (metres): x → R(yaw)·x + shift."""

    yaw: float
    shift: np.ndarray

    def apply(self, joints: np.ndarray) -> np.ndarray:
        """The placed joints [..., 3]."""
        return _yaw_rotate(joints, self.yaw) + self.shift

    def then(self, other: Placement) -> Placement:
        """`other` after self: x → other(self(x))."""
        return Placement(self.yaw + other.yaw, _yaw_rotate(self.shift, other.yaw) + other.shift)

    def inverse(self) -> Placement:
        """The placement that undoes this one."""
        return Placement(-self.yaw, -_yaw_rotate(self.shift, -self.yaw))


def _yaw_rotate(points: np.ndarray, yaw: float | np.ndarray) -> np.ndarray:
    """Points [..., 3] turned by `yaw` radians about +Y (counter-clockwise seen from above, Z towards X)."""
    c, s = np.cos(yaw), np.sin(yaw)
    out = np.array(points, dtype=np.float64, copy=True)
    x, z = points[..., 0], points[..., 2]
    out[..., 0] = c * x + s * z
    out[..., 2] = -s * x + c * z
    return out


def _heading(joints: np.ndarray) -> np.ndarray:
    """Facing angle per frame (radians), such that _yaw_rotate by (target − own) turns one facing onto the other."""
    forward = facing(joints)
    return np.arctan2(forward[:, 0], forward[:, 1])


def fit_placement(target: np.ndarray, moving: np.ndarray) -> Placement:
    """The yaw and translation that put `moving` [K, 22, 3] onto `target` [K, 22, 3]: mean heading difference, then
    mean root offset."""
    diff = _heading(target) - _heading(moving)
    yaw = float(np.arctan2(np.sin(diff).mean(), np.cos(diff).mean()))
    shift = (target[:, 0].astype(np.float64) - _yaw_rotate(moving[:, 0], yaw)).mean(axis=0)
    return Placement(yaw, shift)


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """Per-frame bone lengths [K, 22] (joint to parent; 0 for the root)."""
    lengths = np.linalg.norm(skeleton.bone_offsets(np.asarray(joints, dtype=np.float64)), axis=-1)
    lengths[:, 0] = 0.0
    return lengths


def _bone_directions(joints: np.ndarray) -> np.ndarray:
    """Unit bone vectors [K, 22, 3] from parent to joint (the root's is unused)."""
    offsets = skeleton.bone_offsets(np.asarray(joints, dtype=np.float64))
    return offsets / np.maximum(np.linalg.norm(offsets, axis=-1, keepdims=True), 1e-12)


def _rebuild(root: np.ndarray, directions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Joints [K, 22, 3] from root positions [K, 3] and bone vectors [K, 22, 3] (parent to joint) times lengths
    [K or 1, 22]."""
    joints = np.empty(directions.shape)
    joints[:, 0] = root
    for j in range(1, NUM_JOINTS):  # parents come before their children in SMPL-22 order
        joints[:, j] = joints[:, _PARENTS[j]] + directions[:, j] * lengths[:, j, None]
    return joints


def with_bone_lengths(joints: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Joints [K, 22, 3] whose bones are scaled so their median lengths become `lengths` [22] (each frame's bone vector
    times one factor per bone, so the decoder's frame-to-frame length changes are not turned into jitter); the root
    path (height included) is scaled by the ratio of the legs' lengths."""
    own = np.median(bone_lengths(joints), axis=0)
    knee, ankle = skeleton.LEG_LENGTH_JOINTS
    ratio = (lengths[knee] + lengths[ankle]) / (own[knee] + own[ankle])
    scale = np.where(own > 1e-9, lengths / np.maximum(own, 1e-9), 1.0)
    offsets = skeleton.bone_offsets(np.asarray(joints, dtype=np.float64))
    return _rebuild(joints[:, 0] * ratio, offsets * scale[None, :, None], np.ones((1, NUM_JOINTS)))


def _slerp_directions(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 3] turned from `a` towards `b` along the great circle by weights [...]."""
    cos = np.clip((a * b).sum(-1), -1.0, 1.0)
    angle = np.arccos(cos)[..., None]
    sin = np.sin(angle)
    w = weights[..., None]
    near = sin < 1e-6  # (nearly) the same direction: plain interpolation
    safe = np.where(near, 1.0, sin)
    out = np.where(near, (1 - w) * a + w * b,
                   (np.sin((1 - w) * angle) * a + np.sin(w * angle) * b) / safe)
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


def crossfade(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Frames of `a` [K, 22, 3] blended towards `b` by weights [K] (0 = a, 1 = b) in joint-rotation space: every
    bone turns along the shortest arc from its direction in `a` to that in `b`, bone lengths and the root are
    interpolated, and the skeleton is rebuilt from the root."""
    w = np.asarray(weights, dtype=np.float64)
    directions = _slerp_directions(_bone_directions(a), _bone_directions(b), np.broadcast_to(w[:, None], a.shape[:2]))
    lengths = (1 - w[:, None]) * bone_lengths(a) + w[:, None] * bone_lengths(b)
    root = (1 - w[:, None]) * a[:, 0] + w[:, None] * b[:, 0]
    return _rebuild(root, directions, lengths)


def assemble(kept: np.ndarray, decoded: np.ndarray, regions: list[tuple[int, int]], blend: int,
             decoded_frames: tuple[int, int], move_after: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(joints [F, 22, 3], exact [F] bool): `kept` outside the frame regions and their blend windows (exact: the same
    values), the `decoded` [F, 22, 3] frames placed in kept's world inside them, cross-faded over up to `blend` kept
    frames each side (within decoded_frames [start, end), where `decoded` is defined).

    move_after: the kept frames after each region are moved rigidly to continue from it (in-between) instead of the
    region being bent to meet them.
    """
    out = kept.astype(np.float64)
    exact = np.ones(len(kept), dtype=bool)
    first, last = decoded_frames
    for f0, f1 in regions:
        left = np.arange(max(f0 - blend, first), f0)
        right = np.arange(f1, min(f1 + blend, last))
        before = fit_placement(out[left], decoded[left]) if len(left) else None
        after = fit_placement(out[right], decoded[right]) if len(right) else None
        if move_after and before is not None and after is not None:
            out[f1:] = after.inverse().then(before).apply(out[f1:])
            exact[f1:] = False
            after = before
        before = before or after or Placement(0.0, np.zeros(3))
        after = after or before
        span = np.arange(f0 - len(left), f1 + len(right))
        # From the left window's centre to the right one's, each pose turns about its root from one placement's yaw
        # to the other's and its root moves from one placement's path to the other's (smoothstep: no velocity jump).
        u = np.clip((span - (f0 - len(left) / 2)) / max(f1 - f0 + (len(left) + len(right)) / 2, 1), 0, 1)
        u = u * u * (3 - 2 * u)
        root = decoded[span, :1]
        path = (1 - u[:, None, None]) * before.apply(root) + u[:, None, None] * after.apply(root)
        yaw = before.yaw + u * math.remainder(after.yaw - before.yaw, 2 * math.pi)
        placed = _yaw_rotate(decoded[span] - root, yaw[:, None]) + path
        out[f0:f1] = placed[len(left):len(left) + f1 - f0]
        ramp = np.arange(1, blend + 1) / (blend + 1)
        ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: the blend starts and ends without a velocity step
        if len(left):
            out[left] = crossfade(out[left], placed[:len(left)], ramp[-len(left):])
        if len(right):
            out[right] = crossfade(placed[-len(right):], out[right], ramp[:len(right)])
        exact[span] = False
    return out, exact


# ---------------------------------------------------------------------------------------------- the editor

@dataclass
class _Plan:
    """One inpainting job: the result's tokens with the kept ones filled in, and how its frames are assembled."""

    tokens: np.ndarray  # (N, Q) ids of the result; rows outside `keep` are placeholders
    keep: np.ndarray  # (N,) bool
    carried: np.ndarray  # (N,) base ids the kept tokens' source was decoded from; -1 where unknown or new
    kept_joints: np.ndarray  # (4N, 22, 3) world joints of kept frames (anything in region frames)
    window: tuple[int, int]  # tokens given to the transformers and the decoder
    regions: list[tuple[int, int]]  # token ranges to regenerate
    lengths: np.ndarray  # (22,) bone lengths of the result
    move_after: bool = False


class Editor:
    """Edits of existing motions with a SafeGenerator's model, reviewed like generations."""

    def __init__(self, safe: SafeGenerator, settings: EditSettings | None = None):
        self.safe = safe
        self.settings = settings or EditSettings()
        self.settings.validate()
        generator = safe.generator
        self.fps, self.unit, self.max_tokens = generator.fps, generator.unit_length, generator.max_tokens
        # The transformers' ids are the original model's: encode with the original codebooks when LCR edited them.
        self.encoder_models = (safe.original or generator).models

    # --- public operations ---

    def edit(self, source: SourceMotion, spans: list[tuple[int, int]], prompt: str, seed: int = 0,
             variations: int = 1, policy: str = DEFAULT_POLICY, smpl: bool = True) -> list[Generated]:
        """Regenerate the frame spans [start, end) of `source` from `prompt`; one reviewed result per variation."""
        self._check_request(prompt, seed, variations, policy)
        self._check_source_fps(source)
        n = source.num_frames // self.unit
        spans = check_spans(spans, source.num_frames, n * self.unit, self.unit)
        tokens, carried = self._encode(source)
        regions = token_regions(spans, n, self.unit, self.settings.margin_tokens)
        keep = np.ones(n, dtype=bool)
        for t0, t1 in regions:
            keep[t0:t1] = False
        plan = _Plan(tokens, keep, carried, source.joints[:n * self.unit], self._window(n, regions), regions,
                     self._lengths(source.joints))
        return self._run(plan, prompt, seed, variations, policy, smpl)

    def extend(self, source: SourceMotion, seconds: float, prompt: str, at: str = "end", seed: int = 0,
               variations: int = 1, policy: str = DEFAULT_POLICY, smpl: bool = True) -> list[Generated]:
        """`source` with `seconds` of new motion after its end (at="end") or before its start (at="start")."""
        if at not in ("end", "start"):
            raise ValueError(f"at is {at!r}; choose 'end' (after the take) or 'start' (before it)")
        self._check_request(prompt, seed, variations, policy)
        self._check_source_fps(source)
        tokens, carried = self._encode(source)
        n, k = len(tokens), self._new_tokens(seconds)
        context = min(self._context_tokens(), n, self.max_tokens - k)
        frames = source.joints[:n * self.unit]
        empty = np.zeros((k * self.unit, NUM_JOINTS, 3), dtype=frames.dtype)
        filler = np.full((k, tokens.shape[1]), -1, dtype=tokens.dtype)
        if at == "end":
            plan = _Plan(np.concatenate([tokens, filler]), np.arange(n + k) < n,
                         np.concatenate([carried, filler[:, 0]]), np.concatenate([frames, empty]),
                         (n - context, n + k), [(n, n + k)], self._lengths(source.joints))
        else:
            plan = _Plan(np.concatenate([filler, tokens]), np.arange(n + k) >= k,
                         np.concatenate([filler[:, 0], carried]), np.concatenate([empty, frames]),
                         (0, k + context), [(0, k)], self._lengths(source.joints))
        return self._run(plan, prompt, seed, variations, policy, smpl)

    def inbetween(self, a: SourceMotion, b: SourceMotion, seconds: float, prompt: str, seed: int = 0,
                  variations: int = 1, policy: str = DEFAULT_POLICY, smpl: bool = True) -> list[Generated]:
        """`a`, then `seconds` of transition generated from `prompt`, then `b` moved to continue from it."""
        self._check_request(prompt, seed, variations, policy)
        if abs(a.fps - b.fps) > FPS_TOLERANCE:
            raise ValueError(f"the two takes have different frame rates ({a.name}: {a.fps:g} fps, {b.name}: "
                             f"{b.fps:g} fps); resample one so both are at {self.fps:g} fps")
        self._check_source_fps(a)
        self._check_source_fps(b)
        (first, carried_a), (second, carried_b) = self._encode(a), self._encode(b)
        na, nb, k = len(first), len(second), self._new_tokens(seconds)
        budget, context = self.max_tokens - k, self._context_tokens()
        ctx_a = min(na, context, max(budget // 2, budget - nb))
        ctx_b = min(nb, context, budget - ctx_a)
        filler = np.full((k, first.shape[1]), -1, dtype=first.dtype)
        joints = np.concatenate([a.joints[:na * self.unit], np.zeros((k * self.unit, NUM_JOINTS, 3), np.float32),
                                 b.joints[:nb * self.unit]])
        keep = np.ones(na + k + nb, dtype=bool)
        keep[na:na + k] = False
        plan = _Plan(np.concatenate([first, filler, second]), keep,
                     np.concatenate([carried_a, filler[:, 0], carried_b]), joints, (na - ctx_a, na + k + ctx_b),
                     [(na, na + k)], self._lengths(a.joints), move_after=True)
        return self._run(plan, prompt, seed, variations, policy, smpl)

    # --- checks and planning ---

    def _check_request(self, prompt: str, seed: int, variations: int, policy: str) -> None:
        GenerationRequest(prompt, seed=seed, variations=variations).validate()
        check_policy(policy)

    def _check_source_fps(self, source: SourceMotion) -> None:
        if abs(source.fps - self.fps) > FPS_TOLERANCE:
            raise ValueError(f"{source.name} is at {source.fps:g} fps but the model works at {self.fps:g} fps; "
                             f"resample or export the take at {self.fps:g} fps")
        if source.num_frames < self.unit + 1:
            raise ValueError(f"{source.name} has {source.num_frames} frame(s); an editable take needs at least "
                             f"{self.unit + 1}")

    def _new_tokens(self, seconds: float) -> int:
        low, high = SECONDS_RANGE
        most = (self.max_tokens - 2) * self.unit / self.fps
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and low <= seconds <= min(high, most)):
            raise ValueError(f"seconds is {seconds}; allowed range is {low}-{min(high, most):g} (the model decodes "
                             f"{self.max_tokens * self.unit / self.fps:g} s at once, context included)")
        return seconds_to_tokens(seconds, self.fps, self.unit, self.max_tokens)

    def _encode(self, source: SourceMotion) -> tuple[np.ndarray, np.ndarray]:
        """RVQ ids (n, Q) of the source's whole tokens, and the base ids (n,) it carries (-1 when it carries none)."""
        codes = self.encoder_models.config.vq.nb_code
        if source.base_tokens is None:
            carried = np.full(source.num_frames // self.unit, -1, dtype=np.int64)
        elif source.tokens_checked_for == (self.unit, codes):
            carried = source.base_tokens
        else:
            carried = check_base_tokens(source.base_tokens, source.num_frames, self.unit, codes, source.name)
        features = source.features
        if features is None:  # the last frame repeated, so T frames of features cover all T frames of joints
            features = extract_features(np.concatenate([source.joints, source.joints[-1:]]).astype(np.float64),
                                        ground_first=True)
        return encode_features(self.encoder_models, features).astype(np.int64), carried

    def _window(self, n: int, regions: list[tuple[int, int]]) -> tuple[int, int]:
        """The token window decoded at once: everything when it fits, else the regions with context around them."""
        if n <= self.max_tokens:
            return 0, n
        first, last = regions[0][0], regions[-1][1]
        context = (self.max_tokens - (last - first)) // 2
        needed = -(-self.settings.blend_frames // self.unit)
        if context < needed:
            raise ValueError(f"the spans reach over {(last - first) * self.unit / self.fps:g} s of the take; the "
                             f"model decodes at most {self.max_tokens * self.unit / self.fps:g} s at once with "
                             "context; edit spans that far apart one at a time")
        start = min(max(first - context, 0), n - self.max_tokens)
        return start, start + self.max_tokens

    def _context_tokens(self) -> int:
        """Kept tokens shown beside an extension's or in-between's new part: the setting, or enough for the blend."""
        return max(self.settings.context_tokens, -(-self.settings.blend_frames // self.unit))

    @staticmethod
    def _lengths(joints: np.ndarray) -> np.ndarray:
        return np.median(bone_lengths(joints), axis=0)

    # --- decoding and assembly ---

    def _run(self, plan: _Plan, prompt: str, seed: int, variations: int, policy: str, smpl: bool) -> list[Generated]:
        generator = self.safe.for_policy(policy)
        w0, w1 = plan.window
        seeds = [seed + k for k in range(variations)]
        features = generator.encode_prompts([prompt])
        screens = self.safe.screens
        prompt_score = None if screens is None else float(screens.prompt_scores_of_features(features)[0])
        if screens is not None and policy == "block":
            early = screens.before_generation(prompt_score)
            if early.flagged:  # refused without editing, as a generation is
                return self.safe.refused(prompt, seed, variations, early)
        cond = features.expand(variations, -1)
        kept = np.repeat(plan.tokens[None, w0:w1], variations, axis=0)
        keep = np.repeat(plan.keep[None, w0:w1], variations, axis=0)
        ids = self._sample(generator, cond, kept, keep, [torch.Generator().manual_seed(s) for s in seeds])
        results = self._assemble(plan, ids, generator)
        tries = [0] * variations
        for attempt in range(1, self.settings.seam_retries + 1):
            masks = {k: self._resample_mask(plan, seams) for k, (_, seams) in enumerate(results)}
            masks = {k: mask for k, mask in masks.items() if mask is not None}
            if not masks:
                break
            rows = sorted(masks)
            retried = self._sample(generator, cond[rows], ids[rows], ~np.stack([masks[k] for k in rows]),
                                   [_retry_generator(seeds[k], attempt) for k in rows])
            for k, row, result in zip(rows, retried, self._assemble(plan, retried, generator)):
                tries[k] = attempt
                if _worst(result[1]) < _worst(results[k][1]):
                    ids[k], results[k] = row, result
        motions = []
        carried = plan.keep & (plan.carried >= 0)
        also_tokens = None  # without carried ids the kept tokens' base ids are their re-encoded ids: no second reading
        if carried.any():
            also_tokens = [np.where(plan.keep, plan.tokens[:, 0], -1)] * variations
        frame_regions = self._frame_regions(plan)
        for k, (row, (out, seams)) in enumerate(zip(ids, results)):
            tokens = plan.tokens.copy()
            tokens[w0:w1] = row
            tokens[carried, 0] = plan.carried[carried]
            motions.append(GeneratedMotion(
                prompt=prompt, seed=seeds[k], variation=k, fps=self.fps, tokens=tokens,
                features=extract_features(np.concatenate([out, out[-1:]]).astype(np.float64)), joints=out,
                smpl=joints_to_smpl(out, fps=self.fps) if smpl else None, length_from="request",
                sampling=generator.sampling,
                seams=SeamReport.of(seams, frame_regions, self.settings.seam_limit, tries[k])))
        return self.safe.review(motions, policy, prompt_score, edit=True, also_tokens=also_tokens)

    @staticmethod
    def _sample(generator, cond: torch.Tensor, kept: np.ndarray, keep: np.ndarray,
                generators: list[torch.Generator]) -> np.ndarray:
        """Ids (B, count, Q) of the window decoded around the kept ids (B, count, Q) where keep (B, count) is True."""
        count = kept.shape[1]
        ids, _ = generator.sample_tokens(cond, torch.full((len(kept),), count), generators,
                                         torch.from_numpy(kept).to(generator.device),
                                         torch.from_numpy(keep).to(generator.device))
        return ids.cpu().numpy()

    def _assemble(self, plan: _Plan, rows: np.ndarray, generator) -> list[tuple[np.ndarray, list]]:
        """(the result's joints [F, 22, 3], the seam jumps (start, end) of each region) of each row of the window's
        ids (B, count, Q); the rows are decoded by the VQ together."""
        unit, (w0, w1), blend = self.unit, plan.window, self.settings.blend_frames
        frame_regions = self._frame_regions(plan)
        results = []
        for decoded in generator.decode_tokens(list(rows)):
            full = np.zeros(plan.kept_joints.shape, dtype=np.float64)
            full[w0 * unit:w1 * unit] = with_bone_lengths(recover_from_ric(decoded).astype(np.float64), plan.lengths)
            joints, exact = assemble(plan.kept_joints, full, frame_regions, blend, (w0 * unit, w1 * unit),
                                     plan.move_after)
            out = np.where(exact[:, None, None], plan.kept_joints, joints.astype(np.float32))
            results.append((out, seam_pairs(out, frame_regions, blend)))
        return results

    def _frame_regions(self, plan: _Plan) -> list[tuple[int, int]]:
        """The plan's regions in frames of the result."""
        return [(t0 * self.unit, t1 * self.unit) for t0, t1 in plan.regions]

    def _resample_mask(self, plan: _Plan, seams: list) -> np.ndarray | None:
        """(count,) True at the window's tokens to re-sample next to each seam over the limit; None if none is."""
        w0, w1 = plan.window
        mask = np.zeros(w1 - w0, dtype=bool)
        width = self.settings.seam_tokens
        for (t0, t1), (start, end) in zip(plan.regions, seams):
            if start is not None and start > self.settings.seam_limit:
                mask[t0 - w0:min(t0 + width, t1) - w0] = True
            if end is not None and end > self.settings.seam_limit:
                mask[max(t1 - width, t0) - w0:t1 - w0] = True
        return mask if mask.any() else None


def _worst(seams: list) -> float:
    """The largest seam jump of one result (0 when it has no seam)."""
    return max((v for pair in seams for v in pair if v is not None), default=0.0)


def _retry_generator(seed: int, attempt: int) -> torch.Generator:
    """The random stream of a seam re-sampling try: a function of the variation's seed and the try alone."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, attempt]).generate_state(1, np.uint64)[0]
                                             >> np.uint64(1)))
