"""MoMask-family models: RVQ-VAE, masked and residual transformers, length estimator, text encoders, model dirs."""

from safemotion.models.config import (
    FORMAT_VERSION,
    TEXT_ENCODER_DIMS,
    LengthEstimatorConfig,
    ModelConfig,
    TransformerConfig,
    VQConfig,
)
from safemotion.models.length_estimator import LengthEstimator
from safemotion.models.mask_transformer import MaskTransformer
from safemotion.models.model_dir import (
    ModelDirError,
    MotionModels,
    build_models,
    check_model_dir,
    load_model_dir,
    read_model_config,
    save_model_dir,
)
from safemotion.models.momask_import import import_momask
from safemotion.models.residual_transformer import ResidualTransformer
from safemotion.models.rvqvae import RVQVAE
from safemotion.models.text_encoders import TextEncoder, load_text_encoder

__all__ = [
    "FORMAT_VERSION",
    "TEXT_ENCODER_DIMS",
    "LengthEstimator",
    "LengthEstimatorConfig",
    "MaskTransformer",
    "ModelConfig",
    "ModelDirError",
    "MotionModels",
    "RVQVAE",
    "ResidualTransformer",
    "TextEncoder",
    "TransformerConfig",
    "VQConfig",
    "build_models",
    "check_model_dir",
    "import_momask",
    "load_model_dir",
    "load_text_encoder",
    "read_model_config",
    "save_model_dir",
]
