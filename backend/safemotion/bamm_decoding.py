"""BAMM's cascaded decoding of base-layer ids (bamm_architecture.md §6).

Pass 1 (guidance SamplingConfig.cond_scale) samples all seq_len slots left to right with the causal mask; where no
length is requested the [END] class is allowed and the length is the index of the first END (an END at slot 0 becomes
code 0 then END, length 1; no END gives seq_len). Where a length is requested END is excluded.
Pass 2 (guidance SamplingConfig.refine_cond_scale, 3 in the release) keeps part of the tokens and END as
bidirectional context (the hybrid mask) and re-samples every slot left to right with END excluded; afterwards the kept
tokens and END are put back.

Which tokens pass 2 re-generates: round-half-even(L/2) of them (at least one). The release picks them by the tie order
of `argsort` over equal scores (platform-dependent; mostly the second half on CPU). SafeMotion documents a fixed rule
instead: the LAST round(L/2) positions before the length are re-generated, the first ones are kept.

Sampling: plain categorical from the guided softmax at SamplingConfig.temperature (the release always samples at 1);
MoMask's time_steps, topk_filter_thres and gumbel_sample do not apply. Each step draws one
uniform number per sample from the sample's own generator, 2·seq_len draws in all whatever the length, so a sample's
tokens depend only on its seed, condition and requested length. `greedy` takes the argmax instead (top-1 decoding).

Skipped steps: a step whose token no sample of the batch keeps (pass 1: every sample is past its requested length or
its first END; pass 2: every sample is past its length) runs no transformer pass; its draws are still taken. Both masks
hide a position from every earlier one, so the kept tokens are those of running every step. Pass 1 runs step k on the
text and the k ids before it only (the causal mask hides the rest), about a third of the work of full-length passes;
the prefix depends on k alone, not on the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from safemotion.decoding import SKIP_ID, SamplingConfig, per_sample_uniform, sample_ids
from safemotion.models.bamm_transformer import BammTransformer


def refined_positions(lengths: Tensor, seq_len: int) -> Tensor:
    """(B, seq_len) True where pass 2 re-generates a token: the last round(L/2) (≥ 1) positions before L."""
    num_masked = torch.round(lengths.float() * 0.5).clamp(min=1).long()
    position = torch.arange(seq_len, device=lengths.device).unsqueeze(0)
    return (position < lengths.unsqueeze(1)) & (position >= (lengths - num_masked).unsqueeze(1))


def end_token_lengths(ids: Tensor, end_id: int) -> Tensor:
    """Lengths (B,) from pass-1 ids (B, seq_len): index of the first id ≥ end_id, seq_len without one, at least 1."""
    is_end = ids >= end_id
    first = torch.where(is_end.any(dim=1), is_end.float().argmax(dim=1), torch.full_like(ids[:, 0], ids.shape[1]))
    return first.clamp(min=1)


def _autoregressive_pass(model: BammTransformer, ids: Tensor, cond: Tensor, cond_idx: Tensor | None,
                         cond_scale: float, allow_end: Tensor, generators: list[torch.Generator],
                         cfg: SamplingConfig, greedy: bool, needed: Tensor) -> Tensor:
    """Overwrite slots 0..seq_len-1 of ids (B, seq_len + 1) left to right; allow_end (B,) admits the END class.

    needed (B,): slots a sample keeps (those before it); a sample that may end (allow_end) also needs every slot up
    to its first END. Once no sample needs the next slot, the remaining steps only take their draws.
    """
    batch, seq_len = ids.shape[0], ids.shape[1] - 1
    ones = torch.ones(batch, dtype=torch.long)
    for k in range(seq_len):
        ended = (ids[:, :k] == model.end_id).any(dim=1)
        if not bool(((k < needed) | (allow_end & ~ended)).any()):
            if not greedy:
                for _ in range(k, seq_len):
                    per_sample_uniform(generators, ones, 1)
            break
        # the causal pass: output k sees the text and ids before k only, so the pass runs on that prefix
        visible = ids[:, :k] if cond_idx is None else ids
        logits = model.forward_with_cond_scale(visible, cond, cond_idx, cond_scale)[:, :, k].float()  # (B, codes+END)
        logits[:, model.end_id] = torch.where(allow_end, logits[:, model.end_id], float("-inf"))
        if greedy:
            ids[:, k] = logits.argmax(dim=-1)
        else:
            uniform = per_sample_uniform(generators, ones, 1, device=ids.device)
            ids[:, k] = sample_ids(logits.unsqueeze(1), uniform, cfg.temperature, gumbel=False).squeeze(1)
    return ids


@torch.inference_mode()
def decode_bamm(model: BammTransformer, cond: Tensor, lengths: Tensor, generators: list[torch.Generator],
                cfg: SamplingConfig, max_tokens: int, greedy: bool = False) -> tuple[Tensor, Tensor]:
    """Base ids (B, max L) with −1 after each length, and the lengths (B,); a requested length 0 lets END decide.

    max_tokens is the number of token slots (49 in the release: 196 frames / 4).
    """
    device = cond.device
    cond = cond.to(model.cond_emb.weight.dtype)
    seq_len = max_tokens
    batch = cond.shape[0]
    lengths = lengths.to(device).clamp(max=seq_len)
    predict = lengths == 0
    ids = torch.full((batch, seq_len + 1), model.pad_id, dtype=torch.long, device=device)
    ids = _autoregressive_pass(model, ids, cond, None, cfg.cond_scale, predict, generators, cfg, greedy,
                               needed=lengths)

    ended_at_start = predict & (ids[:, 0] == model.end_id)
    ids[:, 0] = torch.where(ended_at_start, 0, ids[:, 0])
    ids[:, 1] = torch.where(ended_at_start, model.end_id, ids[:, 1])
    lengths = torch.where(predict, end_token_lengths(ids[:, :seq_len], model.end_id), lengths)
    position = torch.arange(seq_len + 1, device=device).unsqueeze(0)
    after_end = position > lengths.unsqueeze(1)
    ids = torch.where(predict.unsqueeze(1) & after_end, model.pad_id, ids)
    ids = torch.where(position == lengths.unsqueeze(1), model.end_id, ids)

    refined = torch.nn.functional.pad(refined_positions(lengths, seq_len), (0, 1), value=False)
    kept = (position < lengths.unsqueeze(1)) & ~refined | (position == lengths.unsqueeze(1))
    cond_idx = torch.where(kept, ids, model.pad_id)
    never_end = torch.zeros(batch, dtype=torch.bool, device=device)
    ids = _autoregressive_pass(model, ids.clone(), cond, cond_idx, cfg.refine_cond_scale, never_end, generators,
                               cfg, greedy, needed=lengths)
    ids = torch.where(kept, cond_idx, ids)
    max_len = int(lengths.max())
    return torch.where(position[:, :max_len] < lengths.unsqueeze(1), ids[:, :max_len], SKIP_ID), lengths
