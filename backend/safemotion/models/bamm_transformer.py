"""BAMM base-layer transformer (bamm_architecture.md §2–§4): MoMask's layers with an [END] class and a hybrid mask.

Token ids: codes 0..num_tokens-1, end_id = num_tokens (512), pad_id = num_tokens + 1 (513), mask_id = num_tokens + 2
(514: an embedding row the official code never uses). Input = [text token, ids 0..seq_len] (seq_len + 2 positions);
the sinusoidal encoding covers the text token too. Output position k predicts token k (the text position predicts
token 0), over the codes and END (num_tokens + 1 classes).

Attention: with no conditioning ids the mask is causal. With conditioning ids (kept tokens and END, pad elsewhere),
position p may attend to q when q is a conditioning position, or when p is not one and q ≤ p (§4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safemotion.models.conditioned_transformer import TextConditionedTransformer, guide, with_unconditional
from safemotion.models.config import TransformerConfig


class BammTransformer(TextConditionedTransformer):
    """Causal/hybrid transformer over base-layer ids with a leading text-condition token."""

    predicts_length = True  # emits [END]; generation without a requested length stops there

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg, out_dim=cfg.num_tokens + 1)
        self.end_id = cfg.num_tokens
        self.pad_id = cfg.num_tokens + 1
        self.mask_id = cfg.num_tokens + 2
        self.token_emb = nn.Embedding(cfg.num_tokens + 3, cfg.code_dim)
        self.init_parameters()

    def attention_mask(self, cond_idx: Tensor | None, length: int) -> Tensor:
        """Boolean mask, True = blocked: (S, S) causal without cond_idx, else (B·heads, S, S) hybrid; S = length."""
        causal = torch.ones(length, length, dtype=torch.bool, device=self.cond_emb.weight.device).tril()
        if cond_idx is None:
            return ~causal
        is_cond = F.pad(cond_idx != self.pad_id, (1, 0), value=True)[:, :length]  # (B, S)
        allowed = is_cond.unsqueeze(1) | (~is_cond.unsqueeze(2) & causal)
        return (~allowed).repeat_interleave(self.config.num_heads, dim=0)

    def quantize_int8(self) -> None:
        """Refused: this forward passes BAMM's attention mask straight to the encoder, which the int8 path cannot."""
        raise ValueError("int8 is not available for BAMM models (their hybrid attention mask runs in fp32 or bf16); "
                         "use --precision fp32 or bf16")

    def trans_forward(self, ids: Tensor, cond: Tensor, cond_idx: Tensor | None = None,
                      force_mask: bool = False) -> Tensor:
        """ids (B, n), cond (B, text_dim), cond_idx (B, n) or None → logits (B, num_tokens + 1, n + 1)."""
        text = self.cond_emb(self.mask_cond(cond, force_mask)).unsqueeze(1)
        seq = self.position_enc(torch.cat([text, self.input_process(self.token_emb(ids))], dim=1))
        out = self.seqTransEncoder(seq, mask=self.attention_mask(cond_idx, seq.shape[1]))
        return self.output_process(out)

    def forward_with_cond_scale(self, ids: Tensor, cond: Tensor, cond_idx: Tensor | None = None,
                                cond_scale: float = 3.0) -> Tensor:
        """Guided logits (B, num_tokens + 1, n + 1); conditional and zero-text passes in one batch of 2B."""
        if cond_scale == 1:
            return self.trans_forward(ids, cond, cond_idx)
        doubled = None if cond_idx is None else cond_idx.repeat(2, 1)
        return guide(self.trans_forward(ids.repeat(2, 1), with_unconditional(cond), doubled), cond_scale)

    def forward(self, ids: Tensor, cond: Tensor, m_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training step on base ids (B, n) with token lengths m_lens (§5) → (loss, predicted ids (B, n + 1), accuracy).

        Targets: the ids, END at m_len, pad after. Per batch: with probability 0.5 a ratio r ~ U(0, 0.5) of the
        positions ≤ m_len become conditioning (hybrid mask), else none (causal); a ratio p ~ U(0, 0.5) of the input
        tokens before m_len are replaced by random codes. Cross-entropy at every position ≤ m_len, averaged per sample.
        """
        batch, n = ids.shape
        position = torch.arange(n + 1, device=ids.device).unsqueeze(0)
        lengths = m_lens.unsqueeze(1)
        target = torch.where(position < lengths, F.pad(ids, (0, 1)), self.pad_id)
        target = torch.where(position == lengths, self.end_id, target)
        counted = position <= lengths

        cond_ratio = float(torch.rand(())) * 0.5 if float(torch.rand(())) < 0.5 else 0.0
        cond_idx = None
        if cond_ratio > 0:
            chosen = counted & (torch.rand(batch, n + 1, device=ids.device) < cond_ratio)
            cond_idx = torch.where(chosen, target, self.pad_id)
        corrupt = (position < lengths) & (torch.rand(batch, n + 1, device=ids.device) < float(torch.rand(())) * 0.5)
        inputs = torch.where(corrupt, torch.randint_like(target, high=self.end_id), target)

        logits = self.trans_forward(inputs, cond, cond_idx)[:, :, : n + 1]
        per_position = F.cross_entropy(logits, target.clamp(max=self.end_id), reduction="none") * counted
        loss = (per_position.sum(dim=1) / (m_lens + 1)).mean()
        pred = logits.argmax(dim=1)
        return loss, pred, (pred == target)[counted].float().mean()
