"""Unlearning of a concept in a MoMask-family model; Latent Code Replacement (LCR) edits RVQ codebooks."""

from safemotion.unlearn.lcr import (
    apply_lcr,
    choose_source_code,
    code_presence,
    codebook_std,
    orthogonal_projection_vectors,
    replacement_vectors,
    select_codes,
)

__all__ = [
    "apply_lcr",
    "choose_source_code",
    "code_presence",
    "codebook_std",
    "orthogonal_projection_vectors",
    "replacement_vectors",
    "select_codes",
]
