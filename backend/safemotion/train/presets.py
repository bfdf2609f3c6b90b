"""Named model sizes for `safemotion train vq --preset NAME` and the benchmarks.

- `official`: the released MoMask HumanML3D sizes (momask_architecture.md §3–§6), CLIP text features.
- `mini`: the embedded default, sized so every stage trains in under an hour on 2 CPU cores (bench/RESULTS.md):
  quarter-width VQ (128-wide convolutions, 128-d codes), 4-layer 256-wide transformers, MiniLM text features.
"""

from __future__ import annotations

import dataclasses

from safemotion.models.config import (
    TEXT_ENCODER_DIMS,
    LengthEstimatorConfig,
    ModelConfig,
    TransformerConfig,
    VQConfig,
)


def official() -> ModelConfig:
    """MoMask's released sizes with the CLIP text encoder."""
    return ModelConfig()


def mini() -> ModelConfig:
    """Small model for CPU training and generation, MiniLM text encoder."""
    text_dim = TEXT_ENCODER_DIMS["minilm"]
    transformer = TransformerConfig(latent_dim=256, ff_size=1024, num_layers=4, num_heads=4, dropout=0.2,
                                    cond_drop_prob=0.1, text_dim=text_dim, num_tokens=512, code_dim=128)
    return ModelConfig(
        vq=VQConfig(nb_code=512, code_dim=128, width=128),
        mask_transformer=transformer,
        residual_transformer=dataclasses.replace(transformer, cond_drop_prob=0.2),
        length_estimator=LengthEstimatorConfig(text_dim=text_dim, hidden_dim=256),
        text_encoder="minilm",
    )


PRESETS = {"official": official, "mini": mini}


def preset(name: str) -> ModelConfig:
    """The preset called `name`."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def with_text_encoder(config: ModelConfig, name: str) -> ModelConfig:
    """`config` switched to another text encoder: every text_dim follows the encoder's feature size."""
    if name not in TEXT_ENCODER_DIMS:
        raise ValueError(f"text encoder {name!r} is unknown; choose one of {sorted(TEXT_ENCODER_DIMS)}")
    dim = TEXT_ENCODER_DIMS[name]
    estimator = config.length_estimator
    return dataclasses.replace(
        config,
        text_encoder=name,
        mask_transformer=dataclasses.replace(config.mask_transformer, text_dim=dim),
        residual_transformer=dataclasses.replace(config.residual_transformer, text_dim=dim),
        length_estimator=None if estimator is None else dataclasses.replace(estimator, text_dim=dim),
    )
