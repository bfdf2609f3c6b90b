"""Latent Code Replacement math: code presence counts, code selection, replacement vectors, codebook edit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safemotion.models.config import VQConfig
from safemotion.models.rvqvae import RVQVAE
from safemotion.unlearn.lcr import (
    apply_lcr,
    choose_source_code,
    code_presence,
    codebook_std,
    orthogonal_projection_vectors,
    replacement_vectors,
    select_codes,
)

# --- presence counts ------------------------------------------------------------------------------------------------


def test_code_presence_counts_each_code_once_per_sequence():
    ids = np.array([[1, 1, 2], [2, 3, 3], [0, 0, 0]])
    np.testing.assert_array_equal(code_presence(ids, 5), [1, 1, 2, 1, 0])
    np.testing.assert_array_equal(code_presence(torch.from_numpy(ids), 5), [1, 1, 2, 1, 0])
    rows = [np.array([4, 4, 4, 4, 1]), torch.tensor([1]), np.array([], dtype=np.int64), [4, 0]]
    np.testing.assert_array_equal(code_presence(rows, 5), [1, 2, 0, 0, 2])
    np.testing.assert_array_equal(code_presence([], 3), [0, 0, 0])
    # lengths: only each row's first ids count; what lies beyond (here -1 and 9) is never looked at
    padded = np.array([[4, 4, 1, -1], [1, 9, 9, 9], [-1, -1, -1, -1], [4, 0, 2, 2]], dtype=np.int16)
    np.testing.assert_array_equal(code_presence(padded, 5, lengths=np.array([3, 1, 0, 2])), [1, 2, 0, 0, 2])
    # weights: row i stands for weights[i] sequences
    np.testing.assert_array_equal(code_presence(ids, 5, weights=np.array([2, 0, 3])), [3, 2, 2, 0, 0])


def test_code_presence_rejects_ids_outside_the_codebook():
    with pytest.raises(ValueError, match=r"sequence 1: code id -1 .*padding"):
        code_presence(np.array([[0, 1], [2, -1]]), 4)
    with pytest.raises(ValueError, match="sequence 0: code id 4"):
        code_presence([np.array([4])], 4)
    with pytest.raises(ValueError, match="integer"):
        code_presence(np.array([[0.5, 1.0]]), 4)


# --- selection ------------------------------------------------------------------------------------------------------


def test_select_codes_on_hand_computed_counts():
    forget = np.array([5, 1, 3, 0, 2])
    retain = np.array([10, 0, 3, 7, 0])
    # freq  = [0.5, 1e8, 1.0, 0, 2e8]                      → order 4, 1, 2, 0, 3
    # ratio = (f/11) / (r/20 + 1e-8) = [0.909, 9.1e6, 1.818, 0, 1.8e7] → order 4, 1, 2, 0, 3
    assert select_codes(forget, retain, n_forget=10, n_retain=10, k=2) == [1, 4]
    assert select_codes(forget, retain, n_forget=10, n_retain=10, k=3) == [1, 2, 4]
    assert select_codes(forget, retain, n_forget=10, n_retain=10, k=5) == [0, 1, 2, 3, 4]


def test_select_codes_unions_the_two_rankings_when_epsilon_separates_them():
    # Σn_r = 1e8, so ratio ∝ n_f / (n_r + 1): code 1 (2/1 = 2 > 9/5) leads freq, code 2 (9/6 > 2/2) leads ratio.
    forget = np.array([0, 2, 9, 0])
    retain = np.array([10**8 - 6, 1, 5, 0])
    assert select_codes(forget, retain, n_forget=20, n_retain=10**8, k=1) == [1, 2]


def test_select_codes_breaks_ties_by_lower_code_id():
    forget = np.array([3, 3, 3, 0])
    retain = np.array([1, 1, 1, 5])
    assert select_codes(forget, retain, n_forget=5, n_retain=5, k=2) == [0, 1]


def test_select_codes_from_synthetic_token_statistics():
    # Code 7 only in forget sequences, code 9 in half the forget and 10% of the retain ones, codes 0..5 everywhere.
    forget_ids = [np.array([0, 1, 2, 3, 4, 5, 7] + ([9] if i < 10 else [])) for i in range(20)]
    retain_ids = [np.array([0, 1, 2, 3, 4, 5, 5] + ([9] if j < 20 else [])) for j in range(200)]
    forget, retain = code_presence(forget_ids, 16), code_presence(retain_ids, 16)
    assert forget[7] == 20 and retain[7] == 0 and forget[9] == 10 and retain[9] == 20 and retain[5] == 200
    assert select_codes(forget, retain, len(forget_ids), len(retain_ids), k=1) == [7]
    assert select_codes(forget, retain, len(forget_ids), len(retain_ids), k=2) == [7, 9]


def test_select_codes_rejects_bad_input():
    counts = np.array([1, 2, 0])
    with pytest.raises(ValueError, match=r"k must be in 1\.\.3"):
        select_codes(counts, counts, 5, 5, k=4)
    with pytest.raises(ValueError, match="k must be"):
        select_codes(counts, counts, 5, 5, k=0)
    with pytest.raises(ValueError, match="forget set is empty"):
        select_codes(np.zeros(3, int), counts, 0, 5)
    with pytest.raises(ValueError, match="retain set is empty"):
        select_codes(counts, np.zeros(3, int), 5, 0)
    with pytest.raises(ValueError, match="not token frequencies"):
        select_codes(np.array([9, 0, 0]), counts, 5, 5)
    with pytest.raises(ValueError, match="one count per code"):
        select_codes(counts, counts[:2], 5, 5)


# --- replacement ----------------------------------------------------------------------------------------------------


def _arange_codebook() -> torch.Tensor:
    return torch.arange(32, dtype=torch.float32).reshape(8, 4)  # entries 0..31


def test_codebook_std_is_one_scalar_over_all_entries():
    # Unbiased variance of 0..31 is 32·33/12 = 88.
    assert codebook_std(_arange_codebook()) == pytest.approx(math.sqrt(88), rel=1e-6)


def test_replacement_copies_code_zero_plus_seeded_gaussian_noise():
    codebook = _arange_codebook()
    censored = [3, 5, 6]
    exact = replacement_vectors(codebook, censored, alpha=0.0, seed=1)
    assert torch.equal(exact, codebook[0].expand(3, 4))
    vectors = replacement_vectors(codebook, censored, alpha=0.5, seed=1)
    noise = (vectors.double() - codebook[0].double()) / (0.5 * math.sqrt(88))
    expected = torch.randn((3, 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(noise, expected, rtol=1e-5, atol=1e-5)


def test_replacement_noise_has_scale_alpha_sigma():
    codebook = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0)) * 3 + 1
    censored = list(range(1, 2000, 2))
    alpha = 0.7
    noise = replacement_vectors(codebook, censored, alpha=alpha, seed=5) - codebook[0]
    sigma = codebook_std(codebook)
    assert sigma == pytest.approx(3.0, rel=0.02)
    assert noise.std().item() == pytest.approx(alpha * sigma, rel=0.02)
    assert abs(noise.mean().item()) < 0.02 * alpha * sigma
    # Independent noise per censored row.
    assert not torch.allclose(noise[0], noise[1])


def test_replacement_is_deterministic_for_a_seed():
    codebook = _arange_codebook()
    a = replacement_vectors(codebook, [2, 4], seed=11)
    assert torch.equal(a, replacement_vectors(codebook, [2, 4], seed=11))
    assert not torch.equal(a, replacement_vectors(codebook, [2, 4], seed=12))


def test_censored_code_zero_takes_a_seeded_random_uncensored_source():
    codebook = _arange_codebook()
    censored = [0, 1, 2, 3, 4, 5]
    sources = set()
    for seed in range(20):
        source = choose_source_code(censored, 8, seed)
        assert source in (6, 7)
        assert source == choose_source_code(censored, 8, seed)
        vectors = replacement_vectors(codebook, censored, alpha=0.0, seed=seed)
        assert torch.equal(vectors, codebook[source].expand(6, 4))
        sources.add(source)
    assert sources == {6, 7}
    assert choose_source_code([1, 2], 8, seed=3) == 0
    assert choose_source_code([1, 2], 8, seed=3, preferred=5) == 5


def test_replacement_rejects_bad_input():
    codebook = _arange_codebook()
    with pytest.raises(ValueError, match="no uncensored code"):
        replacement_vectors(codebook, list(range(8)))
    with pytest.raises(ValueError, match="no censored codes"):
        replacement_vectors(codebook, [])
    with pytest.raises(ValueError, match="distinct"):
        replacement_vectors(codebook, [1, 1])
    with pytest.raises(ValueError, match=r"\[8\] are outside"):
        replacement_vectors(codebook, [2, 8])
    with pytest.raises(ValueError, match="source code 9"):
        replacement_vectors(codebook, [2], preferred_source=9)
    with pytest.raises(ValueError, match="num_codes, code_dim"):
        replacement_vectors(codebook[0], [0])


def test_orthogonal_projection_on_hand_computed_rows():
    codebook = torch.tensor([[9.0, 9.0, 9.0], [1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    # Mean of rows 1, 2 is (1, 1, 0): d = (1, 1, 0)/√2; row·d = 1/√2 and 3/√2.
    full = orthogonal_projection_vectors(codebook, [1, 2], alpha=1.0)
    torch.testing.assert_close(full, torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]]))
    direction = torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2)
    torch.testing.assert_close(full @ direction, torch.zeros(2), atol=1e-6, rtol=0)
    half = orthogonal_projection_vectors(codebook, [1, 2], alpha=0.5)
    torch.testing.assert_close(half, torch.tensor([[0.75, -0.25, 0.0], [0.25, 1.25, 0.0]]))
    with pytest.raises(ValueError, match="zero vector"):
        orthogonal_projection_vectors(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), [0, 1])


# --- applying the edit ----------------------------------------------------------------------------------------------


def test_apply_lcr_changes_only_the_censored_rows_of_a_copy():
    codebook = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    before = codebook.clone()
    censored = [0, 7, 9]
    vectors = replacement_vectors(codebook, censored, seed=4)
    edited = apply_lcr(codebook, censored, vectors)
    assert torch.equal(codebook, before)  # input untouched
    assert torch.equal(edited[censored], vectors)
    keep = [i for i in range(16) if i not in censored]
    assert torch.equal(edited[keep], codebook[keep])
    assert not torch.equal(edited[censored], codebook[censored])
    with pytest.raises(ValueError, match="one replacement row"):
        apply_lcr(codebook, censored, vectors[:2])


def test_lcr_edit_in_an_rvq_changes_decoding_of_censored_ids_only():
    torch.manual_seed(0)
    cfg = VQConfig(dim_pose=12, nb_code=32, code_dim=16, width=16, num_quantizers=2)
    model = RVQVAE(cfg).eval()
    for layer in model.quantizer.layers:
        layer.codebook.copy_(torch.randn(32, 16))
    with torch.no_grad():
        ids, _ = model.encode(torch.randn(6, 40, 12))  # (6 sequences, 10 tokens, 2 layers)
    base = ids[..., 0]
    forget, retain = code_presence(base[:3], 32), code_presence(base[3:], 32)
    censored = select_codes(forget, retain, 3, 3, k=2)
    assert 2 <= len(censored) <= 4
    layer0 = model.quantizer.layers[0]
    original = layer0.codebook.clone()
    layer0.codebook.copy_(apply_lcr(original, censored, replacement_vectors(original, censored, seed=0)))
    every_code = torch.stack([torch.arange(32), torch.full((32,), 5)], dim=-1)[None]  # (1, 32 tokens, 2 layers)
    with torch.no_grad():
        codes = model.quantizer.get_codes_from_indices(every_code)  # (2 layers, 1, 32, 16)
    changed = [c for c in range(32) if not torch.equal(codes[0, 0, c], original[c])]
    assert changed == censored
    assert torch.equal(codes[1, 0], model.quantizer.layers[1].codebook[5].expand(32, 16))
