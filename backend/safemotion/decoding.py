"""Token decoding for MoMask-family models: token lengths, base-layer ids, residual-layer ids (MoMask §4.4, §5, §6).

Every random draw comes from the sample's own `torch.Generator` (on the CPU), and each sample draws only noise shaped
by its own length, so a sample's tokens depend on its seed and condition, not on the other samples in the batch.
The conditional and unconditional (zero text feature) passes of classifier-free guidance run as one batch of 2B.

Differences from momask-codes, both invisible at the default temperature 1: categorical sampling applies the
temperature to the logits (momask-codes divides the probabilities, which the renormalisation undoes), and the
categorical draw uses the inverse CDF of one uniform number per position instead of `torch.distributions`.

Precision: the transformers may run in bfloat16 (SamplingConfig.precision, applied by the Generator); the text
features are cast to the transformer's dtype and the logits back to float32, so sampling is always done in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from safemotion.models.conditioned_transformer import cosine_schedule, lengths_to_mask
from safemotion.models.length_estimator import LengthEstimator
from safemotion.models.mask_transformer import MaskTransformer
from safemotion.models.residual_transformer import ResidualTransformer

SKIP_ID = -1  # id of padding and of skipped residual codes in decoded token tensors
KEPT_SCORE = 1e5  # confidence of positions that are never re-masked (pads, tokens kept from earlier steps)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}  # floating-point modes → the transformers' dtype
INT8 = "int8"  # float32 transformers whose encoder linears run as dynamically quantized int8 products (CPU only)
PRECISION_NAMES = (*PRECISIONS, INT8)


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings; the defaults are MoMask's evaluation settings (10 steps, CFG 4 base / 5 residual)."""

    time_steps: int = 10
    cond_scale: float = 4.0
    residual_cond_scale: float = 5.0
    refine_cond_scale: float = 3.0  # BAMM's second (bidirectional refinement) pass; unused by MoMask
    temperature: float = 1.0
    topk_filter_thres: float = 0.9
    gumbel_sample: bool = False
    precision: str = "fp32"  # of the two transformers: "fp32", "bf16" (where the hardware has it) or "int8" (CPU)

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range setting."""
        if not 1 <= self.time_steps <= 100:
            raise ValueError(f"time_steps is {self.time_steps}; allowed range is 1-100")
        if not self.temperature > 0:
            raise ValueError(f"temperature is {self.temperature}; it must be positive")
        if not 0 <= self.topk_filter_thres < 1:
            raise ValueError(f"topk_filter_thres is {self.topk_filter_thres}; allowed range is [0, 1)")
        if self.precision not in PRECISION_NAMES:
            raise ValueError(f"precision is {self.precision!r}; choose one of {list(PRECISIONS)} or {INT8!r}")
        for name in ("cond_scale", "residual_cond_scale", "refine_cond_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} is {getattr(self, name)}; it must be a finite number")


def top_k_filter(logits: Tensor, thres: float) -> Tensor:
    """Keep the ceil((1 − thres)·C) largest logits along the last dimension; the others become −inf."""
    k = math.ceil((1 - thres) * logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


def per_sample_uniform(generators: list[torch.Generator], lengths: Tensor, max_len: int, classes: int = 0,
                       device: torch.device | str = "cpu") -> Tensor:
    """Uniform noise in (0, 1], shape (B, max_len) or (B, max_len, classes); row b holds lengths[b] draws from its
    own generator (padding positions are 1)."""
    shape = (max_len, classes) if classes else (max_len,)
    out = torch.ones((len(generators), *shape))
    for row, (generator, length) in enumerate(zip(generators, lengths.tolist())):
        draw_shape = (length, classes) if classes else (length,)
        out[row, :length] = 1.0 - torch.rand(draw_shape, generator=generator)
    return out.to(device)


def _safe_log(x: Tensor) -> Tensor:
    return torch.log(x.clamp(min=1e-20))


def sample_ids(filtered_logits: Tensor, uniform: Tensor, temperature: float, gumbel: bool) -> Tensor:
    """Draw ids from (B, L, C) filtered logits at `temperature`.

    gumbel: argmax(logits / T + Gumbel noise), uniform (B, L, C). Otherwise categorical by inverse CDF,
    uniform (B, L); −inf logits have probability 0 and are never drawn.
    """
    scaled = filtered_logits / temperature
    if gumbel:
        return (scaled - _safe_log(-_safe_log(uniform))).argmax(dim=-1)
    cdf = scaled.softmax(dim=-1).cumsum(dim=-1)
    target = (uniform * cdf[..., -1]).unsqueeze(-1).contiguous()
    return torch.searchsorted(cdf, target).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


@torch.inference_mode()
def sample_token_lengths(estimator: LengthEstimator, cond: Tensor, generators: list[torch.Generator],
                         max_tokens: int) -> Tensor:
    """Token lengths (B,) sampled from the estimator's softmax (one draw per sample), clamped to [1, max_tokens]."""
    cdf = estimator(cond).float().softmax(dim=-1).cumsum(dim=-1).cpu()
    uniform = torch.stack([1.0 - torch.rand((), generator=g) for g in generators])
    drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return drawn.clamp(1, max_tokens)


@torch.inference_mode()
def decode_base(model: MaskTransformer, cond: Tensor, lengths: Tensor, generators: list[torch.Generator],
                cfg: SamplingConfig, kept: Tensor | None = None) -> Tensor:
    """Iterative masked decoding of base-layer ids (B, max(lengths)); padding positions are −1.

    Each step re-masks the lowest-confidence round(cos(πt/2)·m) positions among the latest predictions (at least
    one), where m is the number of positions to decode, predicts them with guided logits (computed at those
    positions only, `MaskTransformer.masked_logits`), and scores the new ids by the unfiltered softmax. `kept`
    (B, max(lengths)), for temporal inpainting: ids ≥ 0 are kept as given, visible to every step and never
    re-masked; −1 marks the positions to decode (None: decode every position, generation).
    """
    device = cond.device
    cond = cond.to(model.cond_emb.weight.dtype)
    lengths = lengths.to(device)
    max_len = int(lengths.max())
    padding = ~lengths_to_mask(lengths, max_len)
    fixed = padding if kept is None else padding | (kept.to(device) >= 0)
    ids = torch.where(padding, model.pad_id, model.mask_id)
    if kept is not None:
        ids = torch.where(fixed & ~padding, kept.to(device), ids)
    scores = torch.where(fixed, KEPT_SCORE, 0.0)
    to_decode = (~fixed).sum(dim=1)
    classes = model.config.num_tokens
    for t in torch.linspace(0, 1, cfg.time_steps):
        num_masked = torch.round(cosine_schedule(t) * to_decode).clamp(min=1)
        ranks = scores.argsort(dim=1, stable=True).argsort(dim=1)
        is_mask = (ranks < num_masked.unsqueeze(-1)) & ~fixed
        ids = torch.where(is_mask, model.mask_id, ids)

        # Only the masked positions' logits are read (the others keep their ids and score KEPT_SCORE), so the model
        # computes and we sample just those rows (N, classes); every sample still draws noise for its whole length.
        logits = model.masked_logits(ids, cond, padding, cfg.cond_scale).float()
        noise = per_sample_uniform(generators, lengths, max_len, classes if cfg.gumbel_sample else 0, device)
        predicted = sample_ids(top_k_filter(logits, cfg.topk_filter_thres), noise[is_mask], cfg.temperature,
                               cfg.gumbel_sample)
        ids = ids.masked_scatter(is_mask, predicted)
        confidence = logits.softmax(dim=-1).gather(-1, predicted.unsqueeze(-1)).squeeze(-1)
        scores = torch.full_like(scores, KEPT_SCORE).masked_scatter(is_mask, confidence)
    return torch.where(padding, SKIP_ID, ids)


@torch.inference_mode()
def decode_residual(model: ResidualTransformer, base_ids: Tensor, cond: Tensor, lengths: Tensor,
                    generators: list[torch.Generator], cfg: SamplingConfig, kept: Tensor | None = None,
                    keep: Tensor | None = None) -> Tensor:
    """All code layers (B, n, Q) from base ids (B, n): one guided Gumbel pass per residual layer.

    Padding and residual positions predicted as the pad class come back as −1 (a skipped, zero code). For temporal
    inpainting, `kept` (B, n, Q) holds ids (−1 = skipped code) that replace the prediction wherever `keep` (B, n) is
    True, so later layers see the kept history.
    """
    device = cond.device
    cond = cond.to(model.cond_emb.weight.dtype)
    lengths = lengths.to(device)
    padding = ~lengths_to_mask(lengths, base_ids.shape[1])
    if keep is not None:
        keep = keep.to(device) & ~padding
        kept = torch.where(kept.to(device) < 0, model.pad_id, kept.to(device))
    ids = torch.where(padding, model.pad_id, base_ids)
    layers = [ids]
    history = torch.zeros((), device=device, dtype=cond.dtype)
    for layer in range(1, model.num_quantizers):
        history = history + model.embed_tokens(layer - 1, ids)
        logits = model.forward_with_cond_scale(history, layer, cond, padding,
                                               cond_scale=cfg.residual_cond_scale).float().permute(0, 2, 1)
        noise = per_sample_uniform(generators, lengths, base_ids.shape[1], logits.shape[-1], device)
        predicted = sample_ids(top_k_filter(logits, cfg.topk_filter_thres), noise, cfg.temperature, gumbel=True)
        if keep is not None:
            predicted = torch.where(keep, kept[..., layer], predicted)
        ids = torch.where(padding, model.pad_id, predicted)
        layers.append(ids)
    stacked = torch.stack(layers, dim=-1)
    return torch.where(stacked == model.pad_id, SKIP_ID, stacked)
