"""Masked transformer for the base code layer (MoMask §4): predicts masked token ids from text and context.

Token ids: codes 0..num_tokens-1, mask_id = num_tokens, pad_id = num_tokens + 1; logits cover codes only.
Backbone: any of config.BACKBONES. With "serpent", every position whose input id is mask_id is passed as a keep
position, so SeRpEnt never merges a [MASK] token with its neighbours (BERT-corrupted training inputs that show a
random or the true id look like context tokens and may be merged, as at inference).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from safemotion.models.conditioned_transformer import (
    TextConditionedTransformer,
    classification_result,
    cosine_schedule,
    guide,
    guided,
    lengths_to_mask,
    with_unconditional,
)
from safemotion.models.config import BACKBONES, TransformerConfig


class MaskTransformer(TextConditionedTransformer):
    """Bidirectional transformer over base-layer ids with a prepended text-condition token."""

    backbones = BACKBONES
    predicts_length = False  # needs a requested or estimated length

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg, out_dim=cfg.num_tokens)
        self.mask_id = cfg.num_tokens
        self.pad_id = cfg.num_tokens + 1
        self.token_emb = nn.Embedding(cfg.num_tokens + 2, cfg.code_dim)
        self.init_parameters()

    def trans_forward(self, ids: Tensor, cond: Tensor, padding_mask: Tensor, force_mask: bool = False,
                      rows: Tensor | None = None) -> Tensor:
        """ids (B, n), cond (B, text_dim), padding_mask (B, n) True = pad → logits (B, num_tokens, n), or (N,
        num_tokens) at the positions `rows` (B, n) only, row-major."""
        return self.run(self.token_emb(ids), cond, [], padding_mask, force_mask, keep_mask=ids == self.mask_id,
                        rows=rows)

    def forward_with_cond_scale(self, ids: Tensor, cond: Tensor, padding_mask: Tensor, cond_scale: float = 3.0,
                                force_mask: bool = False) -> Tensor:
        """Classifier-free-guided logits (B, num_tokens, n); conditional and unconditional in one batched pass."""
        if force_mask:
            return self.trans_forward(ids, cond, padding_mask, force_mask=True)
        if cond_scale == 1:
            return self.trans_forward(ids, cond, padding_mask)
        logits = self.trans_forward(ids.repeat(2, 1), with_unconditional(cond), padding_mask.repeat(2, 1))
        return guide(logits, cond_scale)

    def masked_logits(self, ids: Tensor, cond: Tensor, padding_mask: Tensor, cond_scale: float) -> Tensor:
        """Guided logits (N, num_tokens) at the [MASK] positions of ids (B, n), row-major: those of
        `forward_with_cond_scale` there, for less work (decoding reads no others).

        The last layer's feed-forward and the head run only at [MASK] positions. The unconditional pass sees no text,
        so it runs once per distinct (ids, padding) row: at the first step of generation, once per length.
        """
        rows = ids == self.mask_id
        if cond_scale == 1:
            return self.trans_forward(ids, cond, padding_mask, rows=rows)
        n = ids.shape[1]
        distinct, inverse = torch.unique(torch.cat([ids, padding_mask.long()], dim=1), dim=0, return_inverse=True)
        ids_u, padding_u = distinct[:, :n], distinct[:, n:].bool()
        rows_u = ids_u == self.mask_id
        zeros = cond.new_zeros(len(ids_u), cond.shape[1])
        logits = self.trans_forward(torch.cat([ids, ids_u]), torch.cat([cond, zeros]),
                                    torch.cat([padding_mask, padding_u]), rows=torch.cat([rows, rows_u]))
        count = int(rows.sum())
        conditional, unconditional_u = logits[:count], logits[count:]
        slot = torch.full(ids_u.shape, -1, dtype=torch.long, device=ids.device)  # distinct row's mask → its logit row
        slot[rows_u] = torch.arange(len(unconditional_u), device=ids.device)
        return guided(conditional, unconditional_u[slot[inverse][rows]], cond_scale)

    def forward(self, ids: Tensor, cond: Tensor, m_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training step on base ids (B, n) with token lengths m_lens → (CE loss, predicted ids (B, n), accuracy).

        Cosine-schedule masking per sample, then BERT corruption: 10% of masked inputs become a random code,
        88% of the rest become [MASK], the remainder keep the true id. Loss only on masked positions.
        """
        batch, n = ids.shape
        non_pad = lengths_to_mask(m_lens, n)
        ids = torch.where(non_pad, ids, self.pad_id)

        ratio = cosine_schedule(torch.rand(batch, device=ids.device))
        num_masked = (n * ratio).round().clamp(min=1)
        ranks = torch.rand(batch, n, device=ids.device).argsort(dim=-1)
        mask = (ranks < num_masked.unsqueeze(-1)) & non_pad
        labels = torch.where(mask, ids, self.mask_id)

        random_subset = mask & (torch.rand(batch, n, device=ids.device) < 0.1)
        x_ids = torch.where(random_subset, torch.randint_like(ids, high=self.mask_id), ids)
        mask_subset = mask & ~random_subset & (torch.rand(batch, n, device=ids.device) < 0.88)
        x_ids = torch.where(mask_subset, self.mask_id, x_ids)

        logits = self.trans_forward(x_ids, cond, ~non_pad)
        return classification_result(logits, labels, ignore_index=self.mask_id)
