"""Residual transformer (MoMask §5): predicts code layer j = 1..Q-1 from the summed embeddings of layers < j.

Token ids 0..num_tokens-1, pad_id = num_tokens. Embedding and output tables are tied (share_weight=True):
three stored tensors give per-layer input tables token_embed_weight[k] (embeds layer-k ids, k = 0..Q-2) and
output tables output_proj_weight[j-1] (predicts layer j), with token_embed_weight[j] == output_proj_weight[j-1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safemotion.models.conditioned_transformer import (
    TextConditionedTransformer,
    classification_result,
    cosine_schedule,
    guide,
    init_weights,
    lengths_to_mask,
    with_unconditional,
)
from safemotion.models.config import TransformerConfig


class ResidualTransformer(TextConditionedTransformer):
    """Transformer over [text token, layer-id token, history embeddings] → logits for one code layer."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg, out_dim=cfg.code_dim)
        self.pad_id = cfg.num_tokens
        self.num_quantizers = cfg.num_quantizers
        self.quant_emb = nn.Linear(cfg.num_quantizers, cfg.latent_dim)
        rows = cfg.num_tokens + 1
        self.embed_proj_shared_weight = nn.Parameter(torch.randn(cfg.num_quantizers - 2, rows, cfg.code_dim) * 0.02)
        self.token_embed_weight_ = nn.Parameter(torch.randn(1, rows, cfg.code_dim) * 0.02)
        self.output_proj_weight_ = nn.Parameter(torch.randn(1, rows, cfg.code_dim) * 0.02)
        self.apply(init_weights)

    @property
    def token_embed_weight(self) -> Tensor:
        """(Q-1, num_tokens+1, code_dim); row k embeds ids of code layer k."""
        return torch.cat([self.token_embed_weight_, self.embed_proj_shared_weight])

    @property
    def output_proj_weight(self) -> Tensor:
        """(Q-1, num_tokens+1, code_dim); row j-1 scores ids of code layer j."""
        return torch.cat([self.embed_proj_shared_weight, self.output_proj_weight_])

    def input_table(self, layer: int) -> Tensor:
        """token_embed_weight[layer] without building the stacked tensor."""
        return self.token_embed_weight_[0] if layer == 0 else self.embed_proj_shared_weight[layer - 1]

    def output_table(self, layer: int) -> Tensor:
        """output_proj_weight[layer - 1] without building the stacked tensor."""
        shared = self.embed_proj_shared_weight
        return shared[layer - 1] if layer - 1 < shared.shape[0] else self.output_proj_weight_[0]

    def embed_tokens(self, layer: int, ids: Tensor) -> Tensor:
        """Embed ids (B, n) of code layer `layer` (0..Q-2; pads = pad_id) → (B, n, code_dim)."""
        return F.embedding(ids, self.input_table(layer))

    def trans_forward(self, history: Tensor, qids: Tensor, cond: Tensor, padding_mask: Tensor,
                      force_mask: bool = False) -> Tensor:
        """history (B, n, code_dim), qids (B,) layer to predict → features (B, code_dim, n)."""
        q_token = self.quant_emb(F.one_hot(qids, self.num_quantizers).to(history.dtype))
        return self.run(history, cond, [q_token], padding_mask, force_mask)

    def output_project(self, features: Tensor, qids: Tensor) -> Tensor:
        """features (B, code_dim, n), qids (B,) → logits (B, num_tokens+1, n) from each sample's layer table."""
        if bool((qids == qids[0]).all()):  # decoding: one layer for the whole batch, one shared table
            return torch.matmul(self.output_table(int(qids[0])), features)
        return torch.einsum("bnc,bcs->bns", self.output_proj_weight[qids - 1], features)

    def logits(self, history: Tensor, qids: Tensor, cond: Tensor, padding_mask: Tensor,
               force_mask: bool = False) -> Tensor:
        """Logits (B, num_tokens+1, n) for layers qids (B,)."""
        return self.output_project(self.trans_forward(history, qids, cond, padding_mask, force_mask), qids)

    def forward_with_cond_scale(self, history: Tensor, q_id: int, cond: Tensor, padding_mask: Tensor,
                                cond_scale: float = 3.0, force_mask: bool = False) -> Tensor:
        """Guided logits (B, num_tokens+1, n) for code layer q_id; cond and uncond in one batched pass."""
        qids = torch.full((history.shape[0],), q_id, dtype=torch.long, device=history.device)
        if force_mask:
            return self.logits(history, qids, cond, padding_mask, force_mask=True)
        if cond_scale == 1:
            return self.logits(history, qids, cond, padding_mask)
        logits = self.logits(history.repeat(2, 1, 1), qids.repeat(2), with_unconditional(cond),
                             padding_mask.repeat(2, 1))
        return guide(logits, cond_scale)

    def forward(self, all_ids: Tensor, cond: Tensor, m_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training step on ids (B, n, Q) → (CE loss, predicted ids (B, n), accuracy) for one random layer each.

        Layer j ∈ [1, Q-1] per sample: round((1 − cos(πu/2))·(Q−2)) + 1; input = Σ_{k<j} embed_k(ids_k).
        """
        batch, n, num_layers = all_ids.shape
        non_pad = lengths_to_mask(m_lens, n)
        all_ids = torch.where(non_pad.unsqueeze(-1), all_ids, self.pad_id)

        u = torch.rand(batch, device=all_ids.device)
        qids = torch.round((1 - cosine_schedule(u)) * (num_layers - 2)).long() + 1

        tables = self.token_embed_weight
        embedded = torch.stack([F.embedding(all_ids[..., k], tables[k]) for k in range(num_layers - 1)], dim=-1)
        history = embedded.cumsum(dim=-1)[torch.arange(batch), :, :, qids - 1]  # (B, n, code_dim)
        targets = all_ids[torch.arange(batch), :, qids]

        logits = self.logits(history, qids, cond, ~non_pad)
        return classification_result(logits, targets, ignore_index=self.pad_id)
