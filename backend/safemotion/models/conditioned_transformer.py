"""Pieces shared by the masked (base-layer) and residual token transformers (MoMask §4.1).

Sequence layout: [prefix tokens (text condition, ...), motion tokens + PE], batch-first (B, S, latent_dim) with a key
padding mask (B, S), True = padding. momask-codes runs sequence-first; the state-dict keys and the math are the same,
and batch-first lets PyTorch's fused inference path run the transformer layers.

Backbones (TransformerConfig.backbone):

* "transformer" — MoMask's `nn.TransformerEncoder` (post-LN); the official checkpoints' state-dict keys.
* "mamba", "serpent" — `SSMEncoder`: pre-norm residual blocks of a bidirectional Mamba or SeRpEnt mixer plus an MLP,
  then a final LayerNorm. SeRpEnt also receives a keep mask: the prefix tokens and every position the caller flags
  (the masked transformer flags its [MASK] inputs) own a compressed slot in every resampling branch and read their
  own slot back, so they are never merged with neighbours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safemotion.models.config import BACKBONES, TransformerConfig
from safemotion.models.encoder_inference import Int8Linears, encoder_forward, fused_encoder_rows
from safemotion.models.ssm import Mamba, MambaConfig, SeRpEnt, SeRpEntConfig

PE_MAX_LEN = 5000  # rows of the sinusoidal table; part of the released state dicts


def build_backbone(cfg: TransformerConfig) -> nn.Module:
    """The encoder stack named by cfg.backbone: forward(x (B, S, D), src_key_padding_mask (B, S)) → (B, S, D).

    SSMEncoder.forward also takes keep_mask (B, S).
    """
    if cfg.backbone not in BACKBONES:
        raise ValueError(
            f"unknown backbone {cfg.backbone!r}; choose one of {list(BACKBONES)} (TransformerConfig.backbone)"
        )
    if cfg.backbone == "transformer":
        layer = nn.TransformerEncoderLayer(cfg.latent_dim, cfg.num_heads, cfg.ff_size, cfg.dropout, activation="gelu",
                                           batch_first=True)
        return nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
    return SSMEncoder(cfg)


class SSMBlock(nn.Module):
    """x + Dropout(mixer(LN(x))), then x + Dropout(MLP(LN(x))); the mixer is a bidirectional Mamba or SeRpEnt."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.latent_dim
        self.norm1 = nn.LayerNorm(d)
        sizes = dict(d_model=d, bidirectional=True, d_state=cfg.ssm_state, expand=cfg.ssm_expand)
        if cfg.backbone == "mamba":
            self.mixer: nn.Module = Mamba(MambaConfig(**sizes))
        else:
            self.mixer = SeRpEnt(SeRpEntConfig(**sizes))
        self.norm2 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, cfg.ff_size)
        self.linear2 = nn.Linear(cfg.ff_size, d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, padding_mask: Tensor, keep_mask: Tensor | None) -> Tensor:
        """x (B, S, D), padding_mask (B, S) True = pad, keep_mask (B, S) True = never merge (SeRpEnt only)."""
        h = self.norm1(x)
        if isinstance(self.mixer, SeRpEnt):
            # SeRpEnt returns its input plus the mixed branches; here the block's residual stream is the skip.
            mixed = self.mixer(h, padding_mask, keep_mask) - h
        else:
            mixed = self.mixer(h, padding_mask)
        x = x + self.dropout(mixed)
        return x + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))


class SSMEncoder(nn.Module):
    """cfg.num_layers SSMBlocks and a final LayerNorm: (B, S, D) → (B, S, D)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.layers = nn.ModuleList(SSMBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.latent_dim)
        self.register_load_state_dict_post_hook(_rebuild_meta_buffers)

    def forward(self, x: Tensor, src_key_padding_mask: Tensor, keep_mask: Tensor | None = None) -> Tensor:
        """src_key_padding_mask (B, S) True = pad; keep_mask (B, S) True = own a SeRpEnt slot (ignored by Mamba)."""
        h = x
        for layer in self.layers:
            h = layer(h, src_key_padding_mask, keep_mask)
        return self.norm(h)


def _rebuild_meta_buffers(encoder: SSMEncoder, _incompatible_keys) -> None:
    """Refill non-persistent buffers (SeRpEnt's RBF centres) left on the meta device after load_state_dict(assign=True).

    Model directories are loaded into modules built on the meta device; the state dict fills parameters and persistent
    buffers only. The missing values depend on the mixer's config alone, so they are copied from a mixer built on the
    CPU (without touching the global random state).
    """
    fresh: dict[str, Tensor] | None = None
    for layer in encoder.layers:
        mixer = layer.mixer
        missing = [name for name, buffer in mixer.named_buffers() if buffer.is_meta]
        if not missing:
            continue
        if fresh is None:
            with torch.random.fork_rng(devices=[]), torch.device("cpu"):
                fresh = dict(type(mixer)(mixer.config).named_buffers())
        device = next(mixer.parameters()).device
        for name in missing:
            owner, _, attr = name.rpartition(".")
            setattr(mixer.get_submodule(owner), attr, fresh[name].to(device))


class InputProcess(nn.Module):
    """(B, n, code_dim) embeddings → (B, n, latent_dim)."""

    def __init__(self, in_dim: int, latent_dim: int):
        super().__init__()
        self.poseEmbedding = nn.Linear(in_dim, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.poseEmbedding(x)


class PositionalEncoding(nn.Module):
    """Sinusoidal table (max_len, 1, d) (MDM's layout, kept for the state dict) added to (B, n, d), then dropout."""

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
        return self.dropout(x + self.pe[: x.shape[1]].transpose(0, 1))


class OutputProcess(nn.Module):
    """BERT-style head: dense → GELU → LayerNorm(eps 1e-12) → linear; (B, n, latent) → (B, out_dim, n)."""

    def __init__(self, out_dim: int, latent_dim: int):
        super().__init__()
        self.dense = nn.Linear(latent_dim, latent_dim)
        self.LayerNorm = nn.LayerNorm(latent_dim, eps=1e-12)
        self.poseFinal = nn.Linear(latent_dim, out_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.head(h).transpose(1, 2)

    def head(self, h: Tensor) -> Tensor:
        """(..., latent) → (..., out_dim), position by position."""
        return self.poseFinal(self.LayerNorm(F.gelu(self.dense(h))))


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
    """Input projection + PE, text-condition token, backbone, output head; subclasses add token embeddings.

    `backbones` lists the TransformerConfig.backbone values a subclass supports.
    """

    backbones: tuple[str, ...] = ("transformer",)

    def __init__(self, cfg: TransformerConfig, out_dim: int):
        super().__init__()
        if cfg.backbone in BACKBONES and cfg.backbone not in self.backbones:
            raise ValueError(f"{type(self).__name__} supports backbone {list(self.backbones)}, not {cfg.backbone!r}")
        self.config = cfg
        self.cond_drop_prob = cfg.cond_drop_prob
        self.input_process = InputProcess(cfg.code_dim, cfg.latent_dim)
        self.position_enc = PositionalEncoding(cfg.latent_dim, cfg.dropout)
        self.seqTransEncoder = build_backbone(cfg)
        self.cond_emb = nn.Linear(cfg.text_dim, cfg.latent_dim)
        self.output_process = OutputProcess(out_dim, cfg.latent_dim)
        self.int8_linears: Int8Linears | None = None

    def quantize_int8(self) -> None:
        """Run the encoder layers' linears as dynamically quantized int8 products from now on (inference only)."""
        if not isinstance(self.seqTransEncoder, nn.TransformerEncoder):
            raise ValueError(f"int8 needs the transformer backbone, not {self.config.backbone!r}")
        self.int8_linears = Int8Linears(self.seqTransEncoder)

    def mask_cond(self, cond: Tensor, force_mask: bool = False) -> Tensor:
        """Zero the text feature: always with force_mask, per sample with p = cond_drop_prob while training."""
        if force_mask:
            return torch.zeros_like(cond)
        if self.training and self.cond_drop_prob > 0:
            keep = 1.0 - torch.bernoulli(torch.full((cond.shape[0], 1), self.cond_drop_prob, device=cond.device))
            return cond * keep
        return cond

    def init_parameters(self) -> None:
        """MoMask init (`init_weights`) everywhere except inside SSM mixers, which keep their own (Δ bias, A, D)."""
        mixers = {id(sub) for block in self.modules() if isinstance(block, SSMBlock) for sub in block.mixer.modules()}
        self.apply(lambda module: None if id(module) in mixers else init_weights(module))

    def run(self, x: Tensor, cond: Tensor, extra_prefix: list[Tensor], padding_mask: Tensor,
            force_mask: bool = False, keep_mask: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """x (B, n, code_dim), cond (B, text_dim), extra prefix tokens (B, latent) each → head output (B, out, n),
        or with `rows` (B, n) bool the head output at those motion positions only, (N, out) in row-major order.

        The condition and prefix tokens come first and get no positional encoding. keep_mask (B, n): motion
        positions an SSM backbone must never merge away (the prefix is always kept); the transformer ignores it.
        At inference the transformer backbone runs its last layer's feed-forward (and the head) only at `rows`.
        """
        cond = self.cond_emb(self.mask_cond(cond, force_mask))
        motion = self.position_enc(self.input_process(x))
        prefix = torch.stack([cond, *extra_prefix], dim=1)
        seq = torch.cat([prefix, motion], dim=1)
        num_prefix = prefix.shape[1]
        mask = F.pad(padding_mask, (num_prefix, 0), value=False)
        selected = None if rows is None else F.pad(rows, (num_prefix, 0), value=False)
        inference = not self.training and not torch.is_grad_enabled()
        if isinstance(self.seqTransEncoder, SSMEncoder):
            keep = torch.zeros_like(padding_mask) if keep_mask is None else keep_mask
            keep = F.pad(keep, (num_prefix, 0), value=True)
            out = self.seqTransEncoder(seq, src_key_padding_mask=mask, keep_mask=keep)
        else:
            # Without padding, no mask lets PyTorch use fused attention instead of its slower masked softmax.
            mask = mask if mask.any() else None
            if inference and self.int8_linears is not None:
                out = encoder_forward(self.seqTransEncoder, seq, mask, self.int8_linears, selected)
            elif inference and selected is not None:
                out = fused_encoder_rows(self.seqTransEncoder, seq, mask, selected)
            else:
                out = self.seqTransEncoder(seq, src_key_padding_mask=mask)
        if selected is None:
            return self.output_process(out[:, num_prefix:])
        return self.output_process.head(out if out.dim() == 2 else out[selected])  # 2-d: already at the rows


def with_unconditional(cond: Tensor) -> Tensor:
    """Stack the batch's text features over zero features, for a single classifier-free-guidance pass."""
    return torch.cat([cond, torch.zeros_like(cond)])


def guide(logits: Tensor, cond_scale: float) -> Tensor:
    """Combine a doubled batch [conditional; unconditional]: uncond + cond_scale · (cond − uncond)."""
    return guided(*logits.chunk(2), cond_scale)


def guided(conditional: Tensor, unconditional: Tensor, cond_scale: float) -> Tensor:
    """Classifier-free guidance: uncond + cond_scale · (cond − uncond)."""
    return unconditional + (conditional - unconditional) * cond_scale
