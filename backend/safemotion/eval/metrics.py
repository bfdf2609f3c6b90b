"""Text-to-motion metrics on evaluator embeddings (MoMask protocol + Human Motion Unlearning's MM-Safe).

Pure numpy/scipy; the inputs are embeddings from the Guo et al. text/motion evaluator, already computed by the caller.
Behaviour follows momask-codes `utils/metrics.py` and Mamiglia/hmu `src/eval/eval_fn_t2m.py` / `t2m_unlearn.py`:

- ``r_precision(text, motion, batch_size=32)``: per batch, Euclidean distance matrix with **texts as rows and
  motions as columns**, `np.argsort` of each row; top-k hit when a text's own motion is among its k nearest motions;
  hits summed over batches / number of samples. Returns [R@1, R@2, R@3].
- ``mm_dist(text, motion)``: mean ‖e_t − e_m‖₂ over samples (hmu's ``MM-Dist``; momask's "matching score").
- ``fid(real, generated)``: Fréchet distance of Gaussians fitted with `np.mean` / `np.cov(rowvar=False)`;
  `scipy.linalg.sqrtm(Σ₁Σ₂)`, retried with 1e-6·I added to both covariances when not finite; real part kept
  (an imaginary diagonal above 1e-3 is an error, as upstream).
- ``diversity(generated, times=300)``: mean distance over `times` index pairs, each side an independent draw
  without replacement; hmu uses N pairs when N ≤ 300.
- ``multimodality(per_text [T, R, D], times=10)``: one set of `times` pairs of repeat indices shared by all texts;
  mean distance.
- ``mm_safe(clean_text, motion, changed, batch_size=32)``: Human Motion Unlearning's MM-Safe, see its docstring.
- ``mean_and_ci(values)``: mean and 95% half-width 1.96·std/√n (population std, `np.std`), as `t2m_unlearn.py`
  reports the 20 repeats.

Random draws take `rng` (a `numpy.random.Generator`, a seed, or None); upstream uses the global `np.random`.
Batched metrics need the sample count to be a multiple of the batch size: the official loaders use `drop_last=True`,
so the caller drops the partial last batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import linalg

BATCH_SIZE = 32  # evaluation batch of the MoMask / hmu protocol (R-precision and MM-Safe are per batch)
DIVERSITY_TIMES = 300
MULTIMODALITY_TIMES = 10
FID_EPS = 1e-6
CI_Z = 1.96


class MeanCI(NamedTuple):
    """Mean over evaluation repeats and the half-width of its 95% confidence interval."""

    mean: float
    ci95: float


def euclidean_distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise L2 distances (N1, N2) between rows of a (N1, D) and b (N2, D), upstream's expansion formula."""
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: a has {a.shape[1]} columns, b has {b.shape[1]}")
    squared = -2 * a @ b.T + np.sum(a**2, axis=1, keepdims=True) + np.sum(b**2, axis=1)
    # Upstream takes sqrt directly; rounding can make d² of identical rows slightly negative (NaN there).
    return np.sqrt(np.maximum(squared, 0.0))


def r_precision_counts(distances: np.ndarray, top_k: int = 3) -> np.ndarray:
    """Hits [k = 1..top_k] of one square batch: row i scores at k when column i is among its k smallest."""
    distances = _matrix(distances, "distances")
    size = distances.shape[0]
    if distances.shape[1] != size:
        raise ValueError(f"R-precision needs a square distance matrix (text i ↔ motion i), got {distances.shape}")
    if not 1 <= top_k <= size:
        raise ValueError(f"top_k must be in 1..{size} (the batch size), got {top_k}")
    order = np.argsort(distances, axis=1)
    rank_of_own = np.argmax(order == np.arange(size)[:, None], axis=1)
    return np.array([(rank_of_own < k).sum() for k in range(1, top_k + 1)], dtype=np.int64)


def r_precision(
    text_emb: np.ndarray, motion_emb: np.ndarray, batch_size: int = BATCH_SIZE, top_k: int = 3
) -> np.ndarray:
    """[R@1, ..., R@top_k]: per batch of `batch_size` samples, fraction of texts whose own motion ranks ≤ k."""
    text_emb, motion_emb = _paired(text_emb, motion_emb)
    batches = _batch_count(len(text_emb), batch_size)
    hits = np.zeros(top_k, dtype=np.int64)
    for b in range(batches):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        hits += r_precision_counts(euclidean_distance_matrix(text_emb[rows], motion_emb[rows]), top_k)
    return hits / len(text_emb)


def mm_dist(text_emb: np.ndarray, motion_emb: np.ndarray) -> float:
    """Multimodal distance: mean ‖text_i − motion_i‖₂."""
    text_emb, motion_emb = _paired(text_emb, motion_emb)
    return float(np.linalg.norm(text_emb - motion_emb, axis=1).mean())


def activation_statistics(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of embeddings (N, D), N ≥ 2 (`np.cov`, unbiased)."""
    emb = _matrix(emb, "embeddings")
    if len(emb) < 2:
        raise ValueError(f"a covariance needs at least 2 embeddings, got {len(emb)}")
    return emb.mean(axis=0), np.cov(emb, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = FID_EPS
) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) with upstream's singular-product fallback and real part."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"Gaussian shapes do not match: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, "
            f"sigma2 {sigma2.shape}"
        )
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"FID: sqrtm(Σ₁Σ₂) has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}; "
                "the covariances are badly conditioned (too few samples for the embedding size?)"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real_emb: np.ndarray, generated_emb: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to real and generated motion embeddings."""
    real_mu, real_cov = activation_statistics(real_emb)
    gen_mu, gen_cov = activation_statistics(generated_emb)
    return frechet_distance(real_mu, real_cov, gen_mu, gen_cov)


def diversity(
    emb: np.ndarray, times: int = DIVERSITY_TIMES, rng: np.random.Generator | int | None = None
) -> float:
    """Mean L2 distance over `times` random pairs (N pairs when N ≤ times, as hmu's evaluation does)."""
    emb = _matrix(emb, "embeddings")
    n = len(emb)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 embeddings, got {n}")
    pairs = times if n > times else n
    rng = np.random.default_rng(rng)
    first = rng.choice(n, pairs, replace=False)
    second = rng.choice(n, pairs, replace=False)
    return float(np.linalg.norm(emb[first] - emb[second], axis=1).mean())


def multimodality(
    emb: np.ndarray, times: int = MULTIMODALITY_TIMES, rng: np.random.Generator | int | None = None
) -> float:
    """Mean L2 distance between `times` random pairs of generations per text; emb is (texts, repeats, D)."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 3:
        raise ValueError(f"multimodality needs embeddings shaped (texts, repeats, D), got {emb.shape}")
    repeats = emb.shape[1]
    if repeats < times:
        raise ValueError(f"multimodality draws {times} pairs of repeats without replacement; got {repeats} repeats")
    rng = np.random.default_rng(rng)
    first = rng.choice(repeats, times, replace=False)
    second = rng.choice(repeats, times, replace=False)
    return float(np.linalg.norm(emb[:, first] - emb[:, second], axis=2).mean())


def mm_safe(
    clean_text_emb: np.ndarray,
    motion_emb: np.ndarray,
    changed: Sequence[bool] | np.ndarray,
    batch_size: int = BATCH_SIZE,
) -> float:
    """MM-Safe (Human Motion Unlearning): distance of generated motions to their keyword-masked captions.

    `clean_text_emb[i]` is the evaluator embedding of caption i after `mask_concept_words` (equal to the plain
    caption embedding when nothing was masked) and `changed[i]` says whether masking changed caption i. As
    `eval_fn_t2m.py` computes it, a batch of `batch_size` consecutive samples contributes the sum of
    ‖clean_text_i − motion_i‖₂ over **all** its samples when **any** caption in it changed, and nothing otherwise;
    the total is divided by the number of all samples. `batch_size=1` gives the per-sample reading "sum over samples
    whose caption changed, divided by all samples".
    """
    clean_text_emb, motion_emb = _paired(clean_text_emb, motion_emb)
    changed = np.asarray(changed, dtype=bool)
    if changed.shape != (len(motion_emb),):
        raise ValueError(f"`changed` needs one flag per sample ({len(motion_emb)}), got shape {changed.shape}")
    batches = _batch_count(len(motion_emb), batch_size)
    counted = np.repeat(changed.reshape(batches, batch_size).any(axis=1), batch_size)
    distances = np.linalg.norm(clean_text_emb - motion_emb, axis=1)
    return float(distances[counted].sum() / len(motion_emb))


def mean_and_ci(values: Sequence[float] | np.ndarray) -> MeanCI:
    """Mean of per-repeat values and the 95% half-width 1.96·std/√n (population std, as `t2m_unlearn.py`)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"mean_and_ci needs a non-empty 1-D list of per-repeat values, got shape {values.shape}")
    return MeanCI(float(values.mean()), float(CI_Z * values.std() / np.sqrt(len(values))))


def _sqrtm(m: np.ndarray) -> np.ndarray:
    # A singular product is handled by the caller's finiteness check (upstream passes disp=False for the same).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(m)


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples, dim), got shape {x.shape}")
    return x


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _matrix(a, "text embeddings"), _matrix(b, "motion embeddings")
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("no samples to evaluate")
    return a, b


def _batch_count(n: int, batch_size: int) -> int:
    if batch_size < 1 or n % batch_size:
        raise ValueError(
            f"{n} samples do not split into batches of {batch_size}; drop the partial last batch "
            "(the official evaluation loader uses drop_last=True)"
        )
    return n // batch_size
