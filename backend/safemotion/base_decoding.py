"""Base-layer decoding for whichever generator a model directory names (config.generator): one entry point.

MoMask's masked transformer needs every length up front; BAMM's transformer may also choose a length (its [END]).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from safemotion.bamm_decoding import decode_bamm
from safemotion.decoding import SamplingConfig, decode_base
from safemotion.models.bamm_transformer import BammTransformer
from safemotion.models.mask_transformer import MaskTransformer


def _decode_masked(model: MaskTransformer, cond: Tensor, lengths: Tensor, generators: list[torch.Generator],
                   cfg: SamplingConfig, max_tokens: int, kept: Tensor | None) -> tuple[Tensor, Tensor]:
    if bool((lengths < 1).any()):
        raise ValueError("a MoMask masked transformer needs every token length (≥ 1); estimate missing ones first")
    return decode_base(model, cond, lengths, generators, cfg, kept), lengths


def _decode_bamm(model: BammTransformer, cond: Tensor, lengths: Tensor, generators: list[torch.Generator],
                 cfg: SamplingConfig, max_tokens: int, kept: Tensor | None) -> tuple[Tensor, Tensor]:
    if kept is not None:
        raise ValueError("this model's generator is BAMM, which cannot keep tokens of a take: edit takes with a "
                         "MoMask model (config.json \"generator\": \"momask\")")
    return decode_bamm(model, cond, lengths, generators, cfg, max_tokens)


BASE_DECODERS = {MaskTransformer: _decode_masked, BammTransformer: _decode_bamm}


def decode_base_layer(model: nn.Module, cond: Tensor, lengths: Tensor, generators: list[torch.Generator],
                      cfg: SamplingConfig, max_tokens: int, kept: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Base ids (B, max L) with −1 after each length, and the lengths (B,); length 0 = the model chooses
    (only where `model.predicts_length`). Where `kept` (B, max L) is not −1 its ids are kept (editing; MoMask only)."""
    return BASE_DECODERS[type(model)](model, cond, lengths, generators, cfg, max_tokens, kept)
