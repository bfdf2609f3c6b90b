"""Residual VQ-VAE (MoMask §3): conv encoder → residual EMA codebooks → conv decoder, 4 frames per token.

Module and buffer names follow momask-codes so a released `vq_model` state dict loads with strict=True.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safemotion.models.config import VQConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
SKIP_CODE = -1  # index of a layer that contributes nothing (quantizer dropout, or a coarse decode)


class ResConv1DBlock(nn.Module):
    """Pre-activation residual block: x + Dropout(conv_1x1(act(conv_3_dilated(act(x)))))."""

    def __init__(self, width: int, dilation: int, activation: str, dropout: float = 0.2):
        super().__init__()
        self.activation1 = ACTIVATIONS[activation]()
        self.conv1 = nn.Conv1d(width, width, 3, 1, padding=dilation, dilation=dilation)
        self.activation2 = ACTIVATIONS[activation]()
        self.conv2 = nn.Conv1d(width, width, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.conv2(self.activation2(self.conv1(self.activation1(x)))))


class Resnet1D(nn.Module):
    """`depth` residual blocks with dilations growth**(depth-1), ..., growth, 1 (reversed, as in MoMask)."""

    def __init__(self, width: int, depth: int, growth: int, activation: str):
        super().__init__()
        dilations = [growth**d for d in range(depth)][::-1]
        self.model = nn.Sequential(*(ResConv1DBlock(width, d, activation) for d in dilations))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Encoder(nn.Module):
    """(B, dim_pose, T) → (B, code_dim, T / stride_t**down_t)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        w = cfg.width
        blocks: list[nn.Module] = [nn.Conv1d(cfg.dim_pose, w, 3, 1, 1), nn.ReLU()]
        for _ in range(cfg.down_t):
            blocks.append(nn.Sequential(
                nn.Conv1d(w, w, 2 * cfg.stride_t, cfg.stride_t, cfg.stride_t // 2),
                Resnet1D(w, cfg.depth, cfg.dilation_growth_rate, cfg.activation),
            ))
        blocks.append(nn.Conv1d(w, cfg.code_dim, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Decoder(nn.Module):
    """(B, code_dim, n) → (B, dim_pose, n * stride_t**down_t) with nearest upsampling."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        w = cfg.width
        blocks: list[nn.Module] = [nn.Conv1d(cfg.code_dim, w, 3, 1, 1), nn.ReLU()]
        for _ in range(cfg.down_t):
            blocks.append(nn.Sequential(
                Resnet1D(w, cfg.depth, cfg.dilation_growth_rate, cfg.activation),
                nn.Upsample(scale_factor=cfg.stride_t, mode="nearest"),
                nn.Conv1d(w, w, 3, 1, 1),
            ))
        blocks += [nn.Conv1d(w, w, 3, 1, 1), nn.ReLU(), nn.Conv1d(w, cfg.dim_pose, 3, 1, 1)]
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class QuantizeEMAReset(nn.Module):
    """One codebook (buffer, no gradient) trained by EMA with dead-code reset to encoder outputs."""

    def __init__(self, nb_code: int, code_dim: int, mu: float):
        super().__init__()
        self.nb_code, self.code_dim, self.mu = nb_code, code_dim, mu
        self.register_buffer("codebook", torch.zeros(nb_code, code_dim))
        # EMA statistics live outside the state dict, as in MoMask; they start at the first training step.
        self.code_sum: Tensor | None = None
        self.code_count: Tensor | None = None

    def distances(self, x: Tensor) -> Tensor:
        """Squared L2 distance (N, nb_code) from rows of x (N, code_dim) to every code."""
        k = self.codebook.t()
        return x.pow(2).sum(-1, keepdim=True) - 2 * x @ k + k.pow(2).sum(0, keepdim=True)

    def nearest(self, x: Tensor) -> Tensor:
        """Index of the closest code for each row of x (N, code_dim)."""
        return torch.argmax(-self.distances(x), dim=-1)

    def dequantize(self, idx: Tensor) -> Tensor:
        """Codes for integer indices (any shape) → (..., code_dim)."""
        return F.embedding(idx, self.codebook)

    def forward(self, x: Tensor, temperature: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, C, T) → (straight-through codes (B, C, T), indices (B, T), commitment loss, perplexity).

        In training mode the choice is Gumbel-perturbed at `temperature` and the codebook is EMA-updated.
        """
        batch, _, length = x.shape
        flat = x.permute(0, 2, 1).reshape(-1, self.code_dim)
        if self.training:
            if self.code_sum is None:
                self._init_statistics(flat)
            logits = -self.distances(flat)
            if temperature > 0:
                logits = logits / temperature + _gumbel_noise(logits)
            idx = logits.argmax(dim=-1)
            perplexity = self._update_codebook(flat, idx)
        else:
            idx = self.nearest(flat)
            perplexity = _perplexity(torch.bincount(idx, minlength=self.nb_code).float())
        codes = self.dequantize(idx)
        commit_loss = F.mse_loss(flat, codes.detach())
        codes = flat + (codes - flat).detach()
        codes = codes.view(batch, length, self.code_dim).permute(0, 2, 1).contiguous()
        return codes, idx.view(batch, length), commit_loss, perplexity

    @torch.no_grad()
    def _init_statistics(self, flat: Tensor) -> None:
        # A fresh (all-zero) codebook starts from encoder outputs, as MoMask does; a loaded one is kept.
        if not self.codebook.any():
            self.codebook.copy_(self._tile(flat)[: self.nb_code])
        self.code_sum = self.codebook.clone()
        self.code_count = torch.ones(self.nb_code, device=flat.device)

    def _tile(self, flat: Tensor) -> Tensor:
        """At least nb_code rows: repeat a short batch and jitter the copies."""
        if flat.shape[0] >= self.nb_code:
            return flat
        repeats = -(-self.nb_code // flat.shape[0])
        out = flat.repeat(repeats, 1)
        return out + torch.randn_like(out) * (0.01 / self.code_dim**0.5)

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, idx: Tensor) -> Tensor:
        onehot = F.one_hot(idx, self.nb_code).to(flat.dtype)  # (N, nb_code)
        code_sum = onehot.t() @ flat
        code_count = onehot.sum(0)
        candidates = self._tile(flat)
        random_codes = candidates[torch.randperm(candidates.shape[0], device=flat.device)[: self.nb_code]]
        self.code_sum = self.mu * self.code_sum + (1.0 - self.mu) * code_sum
        self.code_count = self.mu * self.code_count + (1.0 - self.mu) * code_count
        used = (self.code_count >= 1.0).unsqueeze(1).to(flat.dtype)
        updated = self.code_sum / self.code_count.unsqueeze(1)
        self.codebook.copy_(used * updated + (1 - used) * random_codes)
        return _perplexity(code_count)


def _gumbel_noise(t: Tensor) -> Tensor:
    u = torch.zeros_like(t).uniform_(0, 1)
    return -_safe_log(-_safe_log(u))


def _safe_log(t: Tensor) -> Tensor:
    return torch.log(t.clamp(min=1e-20))


def _perplexity(code_count: Tensor) -> Tensor:
    prob = code_count / code_count.sum()
    return torch.exp(-torch.sum(prob * torch.log(prob + 1e-7)))


class ResidualVQ(nn.Module):
    """Stack of independent codebooks; layer k quantises what layers < k left over."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.num_quantizers = cfg.num_quantizers
        self.quantize_dropout_prob = cfg.quantize_dropout_prob
        self.layers = nn.ModuleList(
            QuantizeEMAReset(cfg.nb_code, cfg.code_dim, cfg.mu) for _ in range(cfg.num_quantizers)
        )

    @property
    def codebooks(self) -> Tensor:
        """All codebooks stacked, (num_quantizers, nb_code, code_dim)."""
        return torch.stack([layer.codebook for layer in self.layers])

    def get_codes_from_indices(self, indices: Tensor) -> Tensor:
        """indices (B, n, q ≤ num_quantizers), −1 = skip → codes (num_quantizers, B, n, code_dim), skipped = 0."""
        if indices.shape[-1] > self.num_quantizers:
            raise ValueError(f"got {indices.shape[-1]} code layers, the model has {self.num_quantizers}")
        indices = F.pad(indices, (0, self.num_quantizers - indices.shape[-1]), value=SKIP_CODE)
        skip = (indices == SKIP_CODE).unsqueeze(-1)
        codes = [layer.dequantize(indices[..., k].clamp(min=0)) for k, layer in enumerate(self.layers)]
        return torch.stack(codes).masked_fill(skip.permute(2, 0, 1, 3), 0.0)

    def quantize(self, x: Tensor, num_layers: int | None = None) -> tuple[Tensor, Tensor]:
        """Nearest-neighbour codes without updates: x (B, C, n) → (indices (B, n, q), codes (q, B, C, n)), q =
        num_layers (default all); the first layers' codes do not depend on the later ones."""
        residual = x
        all_idx, all_codes = [], []
        for layer in self.layers[:num_layers]:
            flat = residual.permute(0, 2, 1).reshape(-1, residual.shape[1])
            idx = layer.nearest(flat).view(x.shape[0], x.shape[2])
            codes = layer.dequantize(idx).permute(0, 2, 1)
            residual = residual - codes
            all_idx.append(idx)
            all_codes.append(codes)
        return torch.stack(all_idx, dim=-1), torch.stack(all_codes)

    def forward(self, x: Tensor, temperature: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training/eval pass: (summed straight-through codes (B, C, n), indices (B, n, q), commit loss, perplexity).

        In training, with probability quantize_dropout_prob, layers above a uniformly drawn index are skipped
        for the whole batch (their indices are −1).
        """
        last_layer = self.num_quantizers - 1
        if self.training and random.random() < self.quantize_dropout_prob:
            last_layer = random.randrange(0, self.num_quantizers)
        residual = x
        quantized = torch.zeros_like(x)
        indices, losses, perplexities = [], [], []
        for k, layer in enumerate(self.layers):
            if k > last_layer:
                indices.append(torch.full((x.shape[0], x.shape[2]), SKIP_CODE, dtype=torch.long, device=x.device))
                continue
            codes, idx, loss, perplexity = layer(residual, temperature)
            residual = residual - codes.detach()
            quantized = quantized + codes
            indices.append(idx)
            losses.append(loss)
            perplexities.append(perplexity)
        return quantized, torch.stack(indices, dim=-1), sum(losses) / len(losses), sum(perplexities) / len(perplexities)


class RVQVAE(nn.Module):
    """Motion (B, T, dim_pose) ↔ token ids (B, T/4, num_quantizers)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = ResidualVQ(cfg)

    def encode(self, motion: Tensor, num_layers: int | None = None) -> tuple[Tensor, Tensor]:
        """Normalised motion (B, T, dim_pose) → (ids (B, n, q), codes (q, B, code_dim, n)), nearest neighbour, for the
        first num_layers code layers (default all)."""
        latent = self.encoder(motion.permute(0, 2, 1).to(self.encoder_dtype))
        return self.quantizer.quantize(latent.float(), num_layers)

    @property
    def encoder_dtype(self) -> torch.dtype:
        """The encoder's weight dtype (float32, or bfloat16 after `encoder.to(torch.bfloat16)`)."""
        return next(self.encoder.parameters()).dtype

    def forward(self, motion: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass: (reconstruction (B, T, dim_pose), commitment loss, perplexity)."""
        latent = self.encoder(motion.permute(0, 2, 1).float())
        quantized, _, commit_loss, perplexity = self.quantizer(latent, temperature=0.5)
        return self.decoder(quantized).permute(0, 2, 1), commit_loss, perplexity

    def forward_decoder(self, ids: Tensor) -> Tensor:
        """ids (B, n, q ≤ num_quantizers), −1 = skip → motion (B, n * 4, dim_pose): decode the sum of codes."""
        latent = self.quantizer.get_codes_from_indices(ids).sum(dim=0)
        return self.decoder(latent.permute(0, 2, 1)).permute(0, 2, 1)
