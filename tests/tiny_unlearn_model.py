"""A tiny random-weight model (16 codes, unit-normal codebooks) for the flagging and audit tests."""

from __future__ import annotations

import dataclasses

import torch

from safemotion.models.config import ModelConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import MotionModels, build_models


def tiny_models() -> MotionModels:
    """Seeded tiny MiniLM-sized model in eval mode, without a length estimator."""
    transformer = TransformerConfig(latent_dim=16, ff_size=32, num_layers=1, num_heads=2, text_dim=384,
                                    num_tokens=16, code_dim=8)
    config = ModelConfig(vq=VQConfig(nb_code=16, code_dim=8, width=8, depth=1), mask_transformer=transformer,
                         residual_transformer=dataclasses.replace(transformer, cond_drop_prob=0.2),
                         length_estimator=None, text_encoder="minilm")
    torch.manual_seed(0)
    models = build_models(config)
    for layer in models.vq.quantizer.layers:
        layer.codebook.normal_()
    return models.eval()
