"""Length estimator (MoMask §6): text feature → logits over token lengths 0..num_classes-1."""

from __future__ import annotations

from torch import Tensor, nn

from safemotion.models.conditioned_transformer import init_weights
from safemotion.models.config import LengthEstimatorConfig


class LengthEstimator(nn.Module):
    """Three Linear-LayerNorm-LeakyReLU stages (hidden, hidden/2, hidden/4) and a linear classifier."""

    def __init__(self, cfg: LengthEstimatorConfig):
        super().__init__()
        self.config = cfg
        h = cfg.hidden_dim
        self.output = nn.Sequential(
            nn.Linear(cfg.text_dim, h), nn.LayerNorm(h), nn.LeakyReLU(0.2), nn.Dropout(cfg.dropout),
            nn.Linear(h, h // 2), nn.LayerNorm(h // 2), nn.LeakyReLU(0.2), nn.Dropout(cfg.dropout),
            nn.Linear(h // 2, h // 4), nn.LayerNorm(h // 4), nn.LeakyReLU(0.2),
            nn.Linear(h // 4, cfg.num_classes),
        )
        self.apply(init_weights)

    def forward(self, text_features: Tensor) -> Tensor:
        """(B, text_dim) → logits (B, num_classes); sample a token length from their softmax."""
        return self.output(text_features)
