"""Latent Code Replacement (LCR, Human Motion Unlearning, arXiv 2503.18674): the math, without data loading.

Follows Mamiglia/hmu `src/methods/lcr.py`. LCR edits one RVQ codebook (by default layer 0 of 6); the transformers
still predict the same token ids, which now decode to different vectors. Per layer:

1. ``code_presence(ids, num_codes)``: for each code, the number of token sequences that contain it at least once
   (a document frequency, upstream's `np.unique` per row + `bincount`), counted separately on forget and retain
   sequences (upstream: ground-truth train_val motions, each caption a sample, 20 random crops each).
2. ``select_codes(forget_counts, retain_counts, n_forget, n_retain, k=16)``: the union of the top-k codes by
   ``freq = n_f / (n_r + 1e-8)`` and by ``ratio = (n_f / (Σn_f + 1e-8)) / (n_r / (Σn_r + 1e-8) + 1e-8)``, sorted.
   Σ sums the presence counts over codes, as upstream (not the number of sequences; `n_forget` / `n_retain` only
   validate the counts). Codes never seen in retain rank first. Ties rank the lower code id first (upstream's
   unstable `np.argsort` leaves them unspecified). The two scores differ by a constant factor except where the 1e-8
   matters, so the union is usually k codes and at most 2k.
3. Replacement of each censored row, either
   - ``replacement_vectors(codebook, censored, alpha, seed)`` (default method): ``codebook[s] + α·σ·ε`` with
     ``s = choose_source_code(...)`` (code 0, or a uniformly random uncensored code when 0 is censored), one scalar
     ``σ = codebook_std(codebook)`` and fresh ``ε ~ N(0, I)`` per censored row, drawn once from `seed`; or
   - ``orthogonal_projection_vectors(codebook, censored, alpha)`` (upstream ``--orth``): remove α times the
     component along the unit mean direction of the censored rows.
4. ``apply_lcr(codebook, censored, vectors)``: a copy of the codebook with only the censored rows replaced.

Codebooks are `torch.Tensor` (num_codes, code_dim), e.g. ``RVQVAE.quantizer.layers[0].codebook``; counts are
numpy int64 arrays (num_codes,).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

EPS = 1e-8  # upstream's guard against division by zero in both selection scores
DEFAULT_K = 16  # upstream --code_prune
PRESENCE_BLOCK = 4096  # sequences per block when counting code presence (a 4096 × codebook-size table)


def code_presence(indices: np.ndarray | Tensor | Sequence[np.ndarray | Tensor], num_codes: int,
                  lengths: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Per code, how many sequences contain it at least once; indices is (N, n) (row i's first lengths[i] ids when
    lengths is given) or a list of 1-D id arrays; with weights (N,), row i stands for weights[i] sequences."""
    if num_codes < 1:
        raise ValueError(f"num_codes must be positive, got {num_codes}")
    ids, lengths = _padded_ids(indices, lengths)
    valid = np.arange(ids.shape[1]) < lengths[:, None]
    bad = valid & ((ids < 0) | (ids >= num_codes))
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"sequence {row}: code id {ids[row, column]} is outside 0..{num_codes - 1} "
            "(drop padding / skipped (-1) positions before counting)"
        )
    # Each (sequence, code) pair counts once: mark pairs in a (sequences, codes + 1) table, a block of rows at a time;
    # positions past a row's length land in the extra column.
    # float64 so the product runs in BLAS; exact for counts below 2^53
    weights = np.ones(len(ids)) if weights is None else np.asarray(weights, np.float64)
    counts = np.zeros(num_codes)
    for first in range(0, len(ids), PRESENCE_BLOCK):
        rows = ids[first:first + PRESENCE_BLOCK].astype(np.int64)
        block = np.where(valid[first:first + PRESENCE_BLOCK], rows, num_codes)
        seen = np.zeros((len(block), num_codes + 1))
        seen[np.arange(len(block))[:, None], block] = 1.0
        counts += weights[first:first + PRESENCE_BLOCK] @ seen[:, :num_codes]
    return counts.astype(np.int64)


def select_codes(
    forget_counts: np.ndarray,
    retain_counts: np.ndarray,
    n_forget: int,
    n_retain: int,
    k: int = DEFAULT_K,
) -> list[int]:
    """Sorted ids of the union of the top-k codes by forget/retain presence ratio and by normalised ratio."""
    forget = np.asarray(forget_counts)
    retain = np.asarray(retain_counts)
    if forget.ndim != 1 or forget.shape != retain.shape:
        raise ValueError(
            f"forget and retain counts must be 1-D arrays of one count per code, got {forget.shape} and {retain.shape}"
        )
    for name, counts, n in (("forget", forget, n_forget), ("retain", retain, n_retain)):
        if n < 1:
            raise ValueError(f"the {name} set is empty ({n} sequences); LCR needs both forget and retain sequences")
        if counts.min() < 0 or counts.max() > n:
            raise ValueError(
                f"{name} counts must lie in 0..{n} (sequences containing each code), found "
                f"{counts.min()}..{counts.max()}; pass code_presence() counts, not token frequencies"
            )
    num_codes = len(forget)
    if not 1 <= k <= num_codes:
        raise ValueError(f"k must be in 1..{num_codes} (the codebook size), got {k}")
    forget = forget.astype(np.float64)
    retain = retain.astype(np.float64)
    freq = forget / (retain + EPS)
    ratio = (forget / (forget.sum() + EPS)) / (retain / (retain.sum() + EPS) + EPS)
    top_freq = np.argsort(-freq, kind="stable")[:k]
    top_ratio = np.argsort(-ratio, kind="stable")[:k]
    return np.union1d(top_freq, top_ratio).tolist()


def codebook_std(codebook: Tensor) -> float:
    """σ of LCR: one scalar, the (unbiased) std of all entries of the layer's codebook (upstream `std(dim=(1, 2))`)."""
    return float(_codebook(codebook).std())


def choose_source_code(censored: Sequence[int], num_codes: int, seed: int, preferred: int = 0) -> int:
    """The code whose vector replaces censored ones: `preferred` unless censored, else a seeded random safe code."""
    generator = torch.Generator().manual_seed(seed)
    return _source_code(_censored_ids(censored, num_codes), num_codes, preferred, generator)


def replacement_vectors(
    codebook: Tensor, censored: Sequence[int], alpha: float = 1.0, seed: int = 0, preferred_source: int = 0
) -> Tensor:
    """New rows (len(censored), D), row j for code censored[j]: codebook[source] + alpha·σ·N(0, I), seeded."""
    codebook = _codebook(codebook)
    num_codes = codebook.shape[0]
    ids = _censored_ids(censored, num_codes)
    # One generator: the source draw (only when `preferred_source` is censored) comes first, then the noise.
    generator = torch.Generator().manual_seed(seed)
    source = _source_code(ids, num_codes, preferred_source, generator)
    noise = torch.randn((len(ids), codebook.shape[1]), generator=generator, dtype=torch.float64)
    scale = alpha * codebook_std(codebook)
    return (codebook[source].cpu().double() + scale * noise).to(device=codebook.device, dtype=codebook.dtype)


def orthogonal_projection_vectors(codebook: Tensor, censored: Sequence[int], alpha: float = 1.0) -> Tensor:
    """New rows (len(censored), D): each censored row minus alpha × its component along their unit mean direction."""
    codebook = _codebook(codebook)
    rows = codebook[_censored_ids(censored, codebook.shape[0])]
    direction = rows.mean(dim=0)
    norm = direction.norm()
    if norm == 0:
        raise ValueError("the censored codes average to the zero vector; their mean direction is undefined")
    direction = direction / norm
    return rows - alpha * (rows @ direction)[:, None] * direction


def apply_lcr(codebook: Tensor, censored: Sequence[int], vectors: Tensor) -> Tensor:
    """A copy of `codebook` whose rows `censored` are replaced by `vectors` (same order); other rows unchanged."""
    codebook = _codebook(codebook)
    ids = _censored_ids(censored, codebook.shape[0])
    if vectors.shape != (len(ids), codebook.shape[1]):
        raise ValueError(
            f"need one replacement row of size {codebook.shape[1]} per censored code ({len(ids)}), "
            f"got vectors shaped {tuple(vectors.shape)}"
        )
    edited = codebook.clone()
    edited[ids] = vectors.to(device=codebook.device, dtype=codebook.dtype)
    return edited


def _padded_ids(indices: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
                lengths: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, n) integer array, lengths (N,)): a 2-D input as it is, a list of 1-D arrays padded with 0."""
    if isinstance(indices, Tensor):
        indices = indices.detach().cpu().numpy()
    if isinstance(indices, np.ndarray):
        if indices.ndim != 2 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(
                f"indices must be integer (sequences, tokens) or a list of 1-D arrays, got {indices.dtype} "
                f"{indices.shape}"
            )
        n, width = indices.shape
        return indices, np.full(n, width) if lengths is None else np.minimum(np.asarray(lengths), width)
    rows = [row.detach().cpu().numpy() if isinstance(row, Tensor) else np.asarray(row) for row in indices]
    for i, row in enumerate(rows):
        if row.ndim != 1 or not (row.size == 0 or np.issubdtype(row.dtype, np.integer)):
            raise ValueError(f"sequence {i}: expected a 1-D array of integer code ids, got {row.dtype} {row.shape}")
    sizes = np.array([len(row) for row in rows], dtype=np.int64)
    padded = np.zeros((len(rows), int(sizes.max(initial=0))), np.int64)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
    return padded, sizes if lengths is None else np.minimum(np.asarray(lengths), sizes)


def _codebook(codebook: Tensor) -> Tensor:
    if not isinstance(codebook, Tensor) or codebook.ndim != 2 or codebook.shape[0] < 1:
        shape = tuple(codebook.shape) if isinstance(codebook, Tensor) else type(codebook).__name__
        raise ValueError(f"codebook must be a torch tensor (num_codes, code_dim), got {shape}")
    return codebook


def _censored_ids(censored: Sequence[int], num_codes: int) -> Tensor:
    ids = [int(c) for c in censored]
    if not ids:
        raise ValueError("no censored codes given")
    if len(set(ids)) != len(ids):
        raise ValueError(f"censored codes must be distinct, got {ids}")
    bad = [c for c in ids if not 0 <= c < num_codes]
    if bad:
        raise ValueError(f"censored codes {bad} are outside the codebook (0..{num_codes - 1})")
    return torch.tensor(ids, dtype=torch.long)


def _source_code(ids: Tensor, num_codes: int, preferred: int, generator: torch.Generator) -> int:
    if not 0 <= preferred < num_codes:
        raise ValueError(f"source code {preferred} is outside the codebook (0..{num_codes - 1})")
    censored = set(ids.tolist())
    if preferred not in censored:
        return preferred
    safe = [c for c in range(num_codes) if c not in censored]
    if not safe:
        raise ValueError("every code is censored; no uncensored code is left to copy from")
    return safe[int(torch.randint(len(safe), (1,), generator=generator))]
