"""Training of the MoMask-family stages (vq, mask, residual, length) into a model directory."""

from safemotion.train.loop import Recipe, TrainResult, train
from safemotion.train.pipeline import TrainOptions, run_stage
from safemotion.train.presets import PRESETS, preset, with_text_encoder
from safemotion.train.stages import DEFAULT_RECIPES, STAGES

__all__ = [
    "DEFAULT_RECIPES",
    "PRESETS",
    "Recipe",
    "STAGES",
    "TrainOptions",
    "TrainResult",
    "preset",
    "run_stage",
    "train",
    "with_text_encoder",
]
