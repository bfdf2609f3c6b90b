"""Evaluation metrics (FID, R-precision, MM-Dist, Diversity, MultiModality, MM-Safe, CI) and concept-word masking."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from safemotion.data.concepts import matches_concept
from safemotion.eval.masking import mask_concept_words
from safemotion.eval.metrics import (
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

# Mamiglia/hmu assets/splits.json, HumanML3D "violence" (the MM-Safe toxic_terms of the paper's evaluation).
PAPER_HUMANML3D_VIOLENCE = ["kick", "punch", "hit", "beat", "boxe", "boxing", "jab", "uppercut", "hook"]


def _samples_with_exact_moments(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n points whose sample mean and np.cov are exactly `mean` and `cov`."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten: cov(z) = I
    return mean + z @ np.linalg.cholesky(cov).T


# --- distances and FID ---------------------------------------------------------------------------------------------


def test_distance_matrix_matches_direct_norms_and_is_zero_on_identical_rows():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    expected = np.linalg.norm(a[:, None] - b[None], axis=-1)
    np.testing.assert_allclose(euclidean_distance_matrix(a, b), expected, rtol=1e-12)
    # Large rows against themselves: the expansion formula rounds d² slightly below 0 on the diagonal.
    big = np.random.default_rng(0).normal(size=(6, 512)) * 30
    raw = -2 * big @ big.T + np.sum(big**2, axis=1, keepdims=True) + np.sum(big**2, axis=1)
    assert np.diag(raw).min() < 0  # upstream would take sqrt of this (NaN)
    own = np.diag(euclidean_distance_matrix(big, big))
    assert np.isfinite(own).all() and own.max() < 1e-3


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(200, 8))
    assert abs(fid(x, x)) < 1e-8


def test_fid_is_finite_for_rank_deficient_covariances():
    x = np.random.default_rng(2).normal(size=(4, 10))  # 4 samples in 10-D: covariance of rank 3
    value = fid(x, x)
    assert math.isfinite(value) and abs(value) < 1e-5


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    # ‖(0,0) − (3,4)‖² + (√1 − √4)² + (√4 − √9)² = 25 + 1 + 1
    d = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([3.0, 4.0]), np.diag([4.0, 9.0]))
    assert d == pytest.approx(27.0, abs=1e-10)


def test_fid_of_samples_with_known_moments_equals_the_closed_form():
    mu1, mu2 = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 2.0])
    cov1 = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    cov2 = np.array([[1.0, -0.4, 0.2], [-0.4, 3.0, 0.0], [0.2, 0.0, 0.8]])
    # Independent closed form: Tr((Σ1Σ2)^½) = Tr((Σ1^½ Σ2 Σ1^½)^½), via symmetric eigendecompositions.
    w, v = np.linalg.eigh(cov1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.sum(np.sqrt(inner))
    x = _samples_with_exact_moments(mu1, cov1, 500, seed=3)
    y = _samples_with_exact_moments(mu2, cov2, 700, seed=4)
    assert fid(x, y) == pytest.approx(expected, rel=1e-9)
    assert fid(y, x) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(12.25 + 8.3 - 2 * np.sum(np.sqrt(inner)))  # ‖Δμ‖² = 12.25, traces 3.5 + 4.8


def test_fid_rejects_mismatched_embedding_sizes():
    with pytest.raises(ValueError, match="shapes do not match"):
        fid(np.zeros((5, 3)) + np.arange(3), np.random.default_rng(0).normal(size=(5, 4)))


# --- R-precision and MM-Dist ---------------------------------------------------------------------------------------


def test_r_precision_counts_on_a_hand_built_distance_matrix():
    # Own column (diagonal) at rank 1, 2, 3 and 4 in rows 0..3.
    distances = np.array(
        [
            [0.1, 0.5, 0.7, 0.9],
            [0.2, 0.4, 0.9, 0.8],
            [0.3, 0.1, 0.6, 0.9],
            [0.1, 0.2, 0.3, 0.4],
        ]
    )
    np.testing.assert_array_equal(r_precision_counts(distances, top_k=3), [1, 2, 3])
    np.testing.assert_array_equal(r_precision_counts(distances, top_k=4), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="top_k"):
        r_precision_counts(distances, top_k=5)
    with pytest.raises(ValueError, match="square"):
        r_precision_counts(distances[:3], top_k=1)


def test_r_precision_ranks_motions_per_text_within_each_batch():
    rng = np.random.default_rng(5)
    batch = rng.normal(size=(4, 6)) * 10
    # Two batches holding the same 4 items: per batch every text finds its own motion first;
    # over the pooled 8 it would tie with the duplicate.
    text = np.concatenate([batch, batch])
    np.testing.assert_allclose(r_precision(text, text, batch_size=4), [1.0, 1.0, 1.0])
    # 1-D: every text is 4 from another motion and 6 from its own, so its own motion ranks second.
    motion = np.array([[0.0], [10.0], [20.0], [30.0]])
    shifted = np.array([[6.0], [16.0], [26.0], [24.0]])
    np.testing.assert_allclose(r_precision(shifted, motion, batch_size=4), [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="drop_last"):
        r_precision(text[:7], text[:7], batch_size=4)


def test_r_precision_uses_texts_as_rows():
    # Rows = texts: both texts are nearest to their own motion. Ranking texts per motion instead would miss
    # motion 1, which is nearer to text 0 (0.4) than to its own text (0.6).
    text = np.array([[0.0, 0.0], [1.0, 0.0]])
    motion = np.array([[0.0, 0.0], [0.4, 0.0]])
    np.testing.assert_allclose(r_precision(text, motion, batch_size=2, top_k=2), [1.0, 1.0])


def test_mm_dist_on_known_embeddings():
    text = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    motion = np.array([[3.0, 4.0], [1.0, 3.0], [2.0, 0.0]])
    assert mm_dist(text, motion) == pytest.approx((5.0 + 2.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="same shape"):
        mm_dist(text, motion[:2])


# --- Diversity and MultiModality ------------------------------------------------------------------------------------


def test_diversity_of_identical_points_is_zero_and_seeded():
    assert diversity(np.ones((50, 4)), rng=0) == 0.0
    x = np.random.default_rng(6).normal(size=(400, 5))
    assert diversity(x, rng=7) == diversity(x, rng=7)
    assert diversity(x, rng=7) != diversity(x, rng=8)


def test_diversity_on_a_regular_simplex():
    # 400 points, all pairwise distances √2: 300 pairs, a pair repeats an index with probability 1/400.
    points = np.eye(400)
    value = diversity(points, rng=1)
    assert math.sqrt(2) * (1 - 5 / 300) <= value <= math.sqrt(2) + 1e-12
    # With N ≤ 300 there are N pairs (hmu): the value is a multiple of √2 / N.
    small = diversity(np.eye(7), rng=2)
    assert small * 7 / math.sqrt(2) == pytest.approx(round(small * 7 / math.sqrt(2)), abs=1e-9)


def test_diversity_of_two_far_clusters_is_about_half_their_distance():
    points = np.zeros((1000, 2))
    points[500:, 0] = 10.0
    assert diversity(points, rng=3) == pytest.approx(5.0, abs=1.5)  # ±5 binomial std over 300 pairs


def test_multimodality_measures_spread_within_each_text():
    rng = np.random.default_rng(9)
    # Texts far apart, repeats of a text identical → 0.
    same = np.repeat(rng.normal(size=(3, 1, 4)) * 100, 30, axis=1)
    assert multimodality(same, rng=0) == 0.0
    # Repeats on a regular simplex (distance √2·scale), scales 1 and 2 for two texts: mean scale 1.5.
    simplex = np.stack([np.eye(200), 2 * np.eye(200)])
    value = multimodality(simplex, rng=1)
    assert 1.5 * math.sqrt(2) * 0.8 <= value <= 1.5 * math.sqrt(2) + 1e-12
    # The same repeat pairs serve every text.
    assert value == pytest.approx(1.5 * multimodality(simplex[:1], rng=1))
    with pytest.raises(ValueError, match="10 pairs"):
        multimodality(np.zeros((2, 9, 3)))


# --- MM-Safe and masking --------------------------------------------------------------------------------------------


def test_mm_safe_on_a_hand_made_example():
    motion = np.zeros((4, 2))
    clean_text = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])  # distances 1, 2, 3, 4
    changed = [False, False, True, False]
    # hmu: batch (0, 1) has no masked caption → 0; batch (2, 3) has one → 3 + 4; divided by all 4.
    assert mm_safe(clean_text, motion, changed, batch_size=2) == pytest.approx(7 / 4)
    # Per-sample reading: only sample 2.
    assert mm_safe(clean_text, motion, changed, batch_size=1) == pytest.approx(3 / 4)
    assert mm_safe(clean_text, motion, changed, batch_size=4) == pytest.approx(10 / 4)
    assert mm_safe(clean_text, motion, [False] * 4, batch_size=2) == 0.0
    with pytest.raises(ValueError, match="one flag per sample"):
        mm_safe(clean_text, motion, [True, False], batch_size=2)


def test_mm_safe_flags_come_from_masking_captions():
    captions = ["a person kicks high", "a person walks", "someone waves", "a boxer jabs twice"]
    masked = [mask_concept_words(c, rule="paper") for c in captions]
    assert masked == ["a person ***s high", "a person walks", "someone waves", "a ***r ***s twice"]  # "boxe" ⊂ "boxer"
    changed = [m != c for m, c in zip(masked, captions)]
    motion = np.zeros((4, 1))
    clean_text = np.array([[2.0], [1.0], [1.0], [6.0]])
    assert mm_safe(clean_text, motion, changed, batch_size=1) == pytest.approx((2 + 6) / 4)


def _hmu_mask_toxic_words(text: str, toxic_words: list[str]) -> str:
    # Mamiglia/hmu src/eval/eval_fn_t2m.py, mask_toxic_words, for one token string.
    return re.compile("|".join(map(re.escape, toxic_words)), re.IGNORECASE).sub("***", text)


@pytest.mark.parametrize(
    "text",
    [
        "a/DET person/NOUN kick/VERB with/ADP right/ADJ leg/NOUN",
        "a/DET_person/NOUN_box/VERB_white/ADJ_box/NOUN",
        "Kicks and PUNCHES, then a right hook",
        "someone beats a drum upbeat",
        "a person walks forward",
        "boxing: jab, jab, uppercut",
    ],
)
def test_paper_masking_equals_hmus_mask_toxic_words(text):
    assert mask_concept_words(text, "violence", "paper") == _hmu_mask_toxic_words(text, PAPER_HUMANML3D_VIOLENCE)


def test_paper_masking_is_case_insensitive_substring():
    assert mask_concept_words("KICK then kick", rule="paper") == "*** then ***"
    assert mask_concept_words("a man in white", rule="paper") == "a man in w***e"  # substring false positive
    assert mask_concept_words("a/DET person/NOUN kick/VERB", rule="paper") == "a/DET person/NOUN ***/VERB"
    for text in ["Kick high", "a person waves", "he carries boxes", "a right hook"]:
        assert (mask_concept_words(text, rule="paper") != text) == matches_concept(text.lower(), rule="paper")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a man kicks forward and punches", "a man *** forward and ***"),
        ("Someone Kicked the door", "Someone *** the door"),
        ("a man kicks a ball", "a man kicks a ball"),  # false friend
        ("a person does a box jump", "a person does a box jump"),
        ("a person in white waves", "a person in white waves"),
        ("he hits him twice", "he *** twice"),
        ("a soccer player kicks, then punches", "a soccer player kicks, then ***"),
    ],
)
def test_word_boundary_masking_skips_false_friends(text, expected):
    masked = mask_concept_words(text, "violence", "word_boundary")
    assert masked == expected
    assert (masked != text) == matches_concept(text, "violence", "word_boundary")


def test_masking_rejects_unknown_concepts_and_rules():
    with pytest.raises(ValueError, match="unknown concept"):
        mask_concept_words("a kick", "dancing", "paper")
    with pytest.raises(ValueError, match="unknown rule"):
        mask_concept_words("a kick", "violence", "fuzzy")


# --- confidence interval --------------------------------------------------------------------------------------------


def test_mean_and_ci_uses_population_std():
    # mean 2.5; np.std([1, 2, 3, 4]) = √1.25; 1.96 · √1.25 / √4 = 1.0957
    result = mean_and_ci([1.0, 2.0, 3.0, 4.0])
    assert result.mean == pytest.approx(2.5)
    assert result.ci95 == pytest.approx(1.96 * math.sqrt(1.25) / 2)
    assert result.ci95 == pytest.approx(1.0957, abs=1e-4)
    assert mean_and_ci([0.7] * 20) == (pytest.approx(0.7), pytest.approx(0.0))
    with pytest.raises(ValueError, match="non-empty"):
        mean_and_ci([])
