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
        is_cond = torch.nn.functional.pad(cond_idx != self.pad_id, (1, 0), value=True)[:, :length]  # (B, S)
        allowed = is_cond.unsqueeze(1) | (~is_cond.unsqueeze(2) & causal)
        return (~allowed).repeat_interleave(self.config.num_heads, dim=0)

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
