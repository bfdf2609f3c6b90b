"""Pieces shared by the masked (base-layer) and residual token transformers (MoMask §4.1).

Sequence layout, sequence-first as in momask-codes: [prefix tokens (text condition, ...), motion tokens + PE].
The backbone sees (S, B, latent_dim) and a key padding mask (B, S) with True = padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safemotion.models.config import TransformerConfig

PE_MAX_LEN = 5000  # rows of the sinusoidal table; part of the released state dicts


def build_backbone(cfg: TransformerConfig) -> nn.Module:
    """The encoder stack named by cfg.backbone: forward(x (S, B, D), src_key_padding_mask (B, S)) → (S, B, D)."""
    if cfg.backbone != "transformer":
        raise ValueError(f"unknown backbone {cfg.backbone!r}; known: 'transformer'")
    layer = nn.TransformerEncoderLayer(cfg.latent_dim, cfg.num_heads, cfg.ff_size, cfg.dropout, activation="gelu")
    return nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)


class InputProcess(nn.Module):
    """(B, n, code_dim) embeddings → (n, B, latent_dim)."""

    def __init__(self, in_dim: int, latent_dim: int):
        super().__init__()
        self.poseEmbedding = nn.Linear(in_dim, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.poseEmbedding(x.permute(1, 0, 2))


class PositionalEncoding(nn.Module):
    """Sinusoidal table (max_len, 1, d) added to a sequence-first input, then dropout (MDM style)."""

    def __init__(self, dim: int, dropout: float, max_len: int = PE_MAX_LEN):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[: x.shape[0]])


class OutputProcess(nn.Module):
    """BERT-style head: dense → GELU → LayerNorm(eps 1e-12) → linear; (n, B, latent) → (B, out_dim, n)."""

    def __init__(self, out_dim: int, latent_dim: int):
        super().__init__()
        self.dense = nn.Linear(latent_dim, latent_dim)
        self.LayerNorm = nn.LayerNorm(latent_dim, eps=1e-12)
        self.poseFinal = nn.Linear(latent_dim, out_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.poseFinal(self.LayerNorm(F.gelu(self.dense(h)))).permute(1, 2, 0)


def init_weights(module: nn.Module) -> None:
    """MoMask init: Linear/Embedding N(0, 0.02) with zero bias; LayerNorm weight 1, bias 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths → (B, max_len) bool, True where the position is inside the sequence."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def cosine_schedule(t: Tensor) -> Tensor:
    """Masking ratio at time t ∈ [0, 1]: cos(πt/2)."""
    return torch.cos(t * math.pi * 0.5)


def classification_result(logits: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy over (B, classes, n) logits; returns (loss, argmax ids (B, n), accuracy on counted labels)."""
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    pred = logits.argmax(dim=1)
    counted = labels != ignore_index
    acc = (pred == labels)[counted].float().mean()
    return loss, pred, acc


class TextConditionedTransformer(nn.Module):
    """Input projection + PE, text-condition token, backbone, output head; subclasses add token embeddings."""

    def __init__(self, cfg: TransformerConfig, out_dim: int):
        super().__init__()
        self.config = cfg
        self.cond_drop_prob = cfg.cond_drop_prob
        self.input_process = InputProcess(cfg.code_dim, cfg.latent_dim)
        self.position_enc = PositionalEncoding(cfg.latent_dim, cfg.dropout)
        self.seqTransEncoder = build_backbone(cfg)
        self.cond_emb = nn.Linear(cfg.text_dim, cfg.latent_dim)
        self.output_process = OutputProcess(out_dim, cfg.latent_dim)

    def mask_cond(self, cond: Tensor, force_mask: bool = False) -> Tensor:
        """Zero the text feature: always with force_mask, per sample with p = cond_drop_prob while training."""
        if force_mask:
            return torch.zeros_like(cond)
        if self.training and self.cond_drop_prob > 0:
            keep = 1.0 - torch.bernoulli(torch.full((cond.shape[0], 1), self.cond_drop_prob, device=cond.device))
            return cond * keep
        return cond

    def run(self, x: Tensor, cond: Tensor, extra_prefix: list[Tensor], padding_mask: Tensor,
            force_mask: bool = False) -> Tensor:
        """x (B, n, code_dim), cond (B, text_dim), extra prefix tokens (B, latent) each → head output (B, out, n).

        The condition and prefix tokens come first and get no positional encoding.
        """
        cond = self.cond_emb(self.mask_cond(cond, force_mask))
        motion = self.position_enc(self.input_process(x))
        prefix = torch.stack([cond, *extra_prefix])
        seq = torch.cat([prefix, motion], dim=0)
        mask = F.pad(padding_mask, (prefix.shape[0], 0), value=False)
        out = self.seqTransEncoder(seq, src_key_padding_mask=mask)[prefix.shape[0]:]
        return self.output_process(out)


def with_unconditional(cond: Tensor) -> Tensor:
    """Stack the batch's text features over zero features, for a single classifier-free-guidance pass."""
    return torch.cat([cond, torch.zeros_like(cond)])


def guide(logits: Tensor, cond_scale: float) -> Tensor:
    """Combine a doubled batch [conditional; unconditional]: uncond + cond_scale · (cond − uncond)."""
    conditional, unconditional = logits.chunk(2)
    return unconditional + (conditional - unconditional) * cond_scale
