"""Evaluation: text-to-motion metrics on evaluator embeddings and concept-word masking for MM-Safe."""

from safemotion.eval.masking import mask_concept_words
from safemotion.eval.metrics import (
    MeanCI,
    activation_statistics,
    diversity,
    euclidean_distance_matrix,
    fid,
    frechet_distance,
    mean_and_ci,
    mm_dist,
    mm_safe,
    multimodality,
    r_precision,
    r_precision_counts,
)

__all__ = [
    "MeanCI",
    "activation_statistics",
    "diversity",
    "euclidean_distance_matrix",
    "fid",
    "frechet_distance",
    "mask_concept_words",
    "mean_and_ci",
    "mm_dist",
    "mm_safe",
    "multimodality",
    "r_precision",
    "r_precision_counts",
]
