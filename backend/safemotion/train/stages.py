"""What each training stage optimises (momask-codes' recipes, momask_architecture.md §3.1, §4.1, §4.3, §5, §6).

- vq: SmoothL1(x̂, x) + 0.5·SmoothL1 on the RIC dims 4:67 + 0.02·commitment, on normalised windows; the codebooks
  follow by EMA with dead-code reset inside the model, quantiser dropout 0.2.
- mask: cross-entropy of the masked transformer on base-layer ids (cosine masking + BERT corruption in the model),
  condition dropped to the zero vector with p = 0.1.
- residual: cross-entropy of the residual transformer on one randomly drawn layer per sample, condition dropout 0.2.
- length: cross-entropy of the length estimator on the token count ⌊frames/4⌋ (SafeMotion's recipe; MoMask ships
  an estimator trained elsewhere).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from safemotion.data.motion_dataset import UNIT_LENGTH, CaptionIndex, TokenBatch, TokenSampler, WindowSampler
from safemotion.models.length_estimator import LengthEstimator
from safemotion.models.mask_transformer import MaskTransformer
from safemotion.models.residual_transformer import ResidualTransformer
from safemotion.models.rvqvae import RVQVAE
from safemotion.motion.features import RIC
from safemotion.train.loop import Recipe

STAGES = ("vq", "mask", "residual", "length")

# Official schedules; iteration counts are SafeMotion defaults (momask-codes counts epochs).
DEFAULT_RECIPES: dict[str, Recipe] = {
    "vq": Recipe(iters=300_000, batch_size=256, lr=2e-4, weight_decay=0.0, warmup_iters=2000,
                 milestones=(150_000, 250_000), gamma=0.05),
    "mask": Recipe(iters=150_000, batch_size=64, lr=2e-4, weight_decay=1e-5, warmup_iters=2000,
                   milestones=(50_000,), gamma=0.1),
    "residual": Recipe(iters=150_000, batch_size=64, lr=2e-4, weight_decay=1e-5, warmup_iters=2000,
                       milestones=(50_000,), gamma=0.1),
    "length": Recipe(iters=20_000, batch_size=64, lr=1e-4, weight_decay=0.0, warmup_iters=500,
                     milestones=(), gamma=1.0),
}
LOSS_VEL = 0.5
COMMIT = 0.02


class VQStage:
    """RVQ-VAE reconstruction on normalised motion windows."""

    name = "vq"

    def __init__(self, vq: RVQVAE, windows: WindowSampler, device: torch.device):
        self.module = vq
        self.windows = windows
        self.device = device

    def batch(self, rng: np.random.Generator, batch_size: int) -> Tensor:
        """Normalised windows (B, window_size, 263)."""
        return torch.from_numpy(self.windows.sample(rng, batch_size)).to(self.device)

    def loss(self, motion: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction + 0.5 · RIC reconstruction + 0.02 · commitment."""
        recon, commit, perplexity = self.module(motion)
        rec = F.smooth_l1_loss(recon, motion)
        explicit = F.smooth_l1_loss(recon[..., RIC], motion[..., RIC])
        loss = rec + LOSS_VEL * explicit + COMMIT * commit
        return loss, {"rec": rec.item(), "commit": commit.item(), "ppl": perplexity.item()}

    def extra_state(self) -> dict[str, Tensor]:
        """EMA codebook statistics of every quantiser layer (not part of the state dict)."""
        state = {}
        for k, layer in enumerate(self.module.quantizer.layers):
            if layer.code_sum is not None:
                state[f"code_sum.{k}"] = layer.code_sum.clone()
                state[f"code_count.{k}"] = layer.code_count.clone()
        return state

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore the EMA statistics saved by extra_state."""
        for k, layer in enumerate(self.module.quantizer.layers):
            if f"code_sum.{k}" in state:
                layer.code_sum = state[f"code_sum.{k}"]
                layer.code_count = state[f"code_count.{k}"]


class _TokenStage:
    """Shared batch drawing for the two transformers: code-id crops with one caption's text feature each."""

    name = ""

    def __init__(self, module: torch.nn.Module, tokens: TokenSampler, text_features: Tensor, device: torch.device):
        self.module = module
        self.tokens = tokens
        self.text_features = text_features.to(device)
        self.device = device

    def batch(self, rng: np.random.Generator, batch_size: int) -> TokenBatch:
        """Random crops of random samples."""
        return self.tokens.sample(rng, batch_size)

    def _tensors(self, batch: TokenBatch) -> tuple[Tensor, Tensor, Tensor]:
        ids = torch.from_numpy(batch.ids).to(self.device)
        lengths = torch.from_numpy(batch.lengths).to(self.device)
        return ids, self.text_features[torch.from_numpy(batch.captions).to(self.device)], lengths

    def extra_state(self) -> dict[str, Tensor]:
        """Nothing beyond the state dict."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Nothing to restore."""


class MaskStage(_TokenStage):
    """Masked transformer on base-layer ids."""

    name = "mask"
    module: MaskTransformer

    def loss(self, batch: TokenBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy on the masked positions."""
        ids, cond, lengths = self._tensors(batch)
        loss, _, accuracy = self.module(ids[..., 0], cond, lengths)
        return loss, {"acc": accuracy.item()}


class ResidualStage(_TokenStage):
    """Residual transformer on all code layers."""

    name = "residual"
    module: ResidualTransformer

    def loss(self, batch: TokenBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy on one random residual layer per sample."""
        ids, cond, lengths = self._tensors(batch)
        loss, _, accuracy = self.module(ids, cond, lengths)
        return loss, {"acc": accuracy.item()}


class LengthStage:
    """Length estimator: text feature → token count class."""

    name = "length"

    def __init__(self, estimator: LengthEstimator, frames: list[int], index: CaptionIndex, text_features: Tensor,
                 device: torch.device):
        self.module = estimator
        self.classes = np.array([f // UNIT_LENGTH for f in frames]).clip(0, estimator.config.num_classes - 1)
        self.index = index
        self.text_features = text_features.to(device)
        self.device = device

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[Tensor, Tensor]:
        """(text features (B, D), target classes (B,)) for random samples and captions."""
        draws = [self.index.draw(rng) for _ in range(batch_size)]
        captions = torch.tensor([c for _, c in draws], device=self.device)
        targets = torch.from_numpy(self.classes[[s for s, _ in draws]]).to(self.device)
        return self.text_features[captions], targets

    def loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy over token-count classes."""
        features, targets = batch
        logits = self.module(features)
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
        return F.cross_entropy(logits, targets), {"acc": accuracy.item()}

    def extra_state(self) -> dict[str, Tensor]:
        """Nothing beyond the state dict."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Nothing to restore."""
