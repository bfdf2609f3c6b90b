"""Normalisation statistics: HumanML3D group std, MoMask feat_bias, Normalizer round trips and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from safemotion.motion import features as F
from safemotion.motion import normalization as N

# Group std values of HumanML3D's Std.npy (humanml3d_format.md §7).
STAGED_GROUP_STD = [
    (F.ROOT_ROT_VEL, 0.01283),
    (F.ROOT_LIN_VEL, 0.01693),
    (F.ROOT_Y, 0.1538),
    (F.RIC, 0.1222),
    (F.ROT, 0.2997),
    (F.LOCAL_VEL, 0.01947),
    (F.CONTACTS, 0.3559),
]


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Three small synthetic feature clips of different lengths and scales."""
    rng = np.random.default_rng(7)
    return [rng.normal(size=(n, 263)) * rng.uniform(0.1, 2.0, size=263) + 0.3 for n in (5, 9, 14)]


def test_groups_cover_all_dims_once():
    covered = np.concatenate([np.arange(263)[g] for g in N.STD_GROUPS])
    np.testing.assert_array_equal(covered, np.arange(263))


def test_group_std_is_the_group_mean_of_per_dim_std(clips):
    std = N.group_std(clips)
    assert std.shape == (263,) and std.dtype == np.float32
    per_dim = np.concatenate(clips).std(axis=0)
    for group in N.STD_GROUPS:
        np.testing.assert_allclose(std[group], per_dim[group].mean(), rtol=1e-6)
    np.testing.assert_array_equal(N.group_std(np.concatenate(clips)), std)
    np.testing.assert_array_equal(N.group_std(np.concatenate(clips)[None]), std)


def test_compute_mean_std(clips):
    mean, std = N.compute_mean_std(clips)
    np.testing.assert_allclose(mean, np.concatenate(clips).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(std, N.group_std(clips))


def test_bad_inputs_raise(clips):
    with pytest.raises(ValueError, match="empty"):
        N.compute_mean_std([])
    with pytest.raises(ValueError, match="clip 1"):
        N.group_std([clips[0], clips[1][:, :200]])
    bad = [c.copy() for c in clips]
    bad[2][3, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        N.compute_mean_std(bad)


def test_model_std_divides_root_and_contacts_by_feat_bias(clips):
    std = N.group_std(clips)
    model = N.model_std(std)
    assert N.FEAT_BIAS == 5.0
    np.testing.assert_allclose(model[0:4], std[0:4] / 5.0, rtol=1e-7)
    np.testing.assert_allclose(model[259:263], std[259:263] / 5.0, rtol=1e-7)
    np.testing.assert_array_equal(model[4:259], std[4:259])
    np.testing.assert_allclose(N.model_std(std, feat_bias=2.0)[0], std[0] / 2.0, rtol=1e-7)
    with pytest.raises(ValueError):
        N.model_std(std, feat_bias=0.0)


def test_staged_std_is_group_averaged(humanml3d_sample: Path):
    std = np.load(humanml3d_sample / "Std.npy")
    mean = np.load(humanml3d_sample / "Mean.npy")
    np.testing.assert_allclose(N.group_average(std), std, rtol=1e-5)
    for group, value in STAGED_GROUP_STD:
        np.testing.assert_allclose(std[group], value, rtol=1e-3)
    np.testing.assert_allclose(mean[3], 0.9386, atol=1e-4)


def test_group_std_on_sample_features(humanml3d_sample: Path):
    vecs = np.load(humanml3d_sample / "new_joint_vecs_012314.npy")
    std = N.group_std([vecs[:80], vecs[80:]])
    for group in N.STD_GROUPS:
        assert np.ptp(std[group]) == 0.0
        np.testing.assert_allclose(std[group][0], vecs.astype(np.float64).std(axis=0)[group].mean(), rtol=1e-6)
    # One clip is less varied than the whole dataset, but it has the same orders of magnitude.
    staged = np.load(humanml3d_sample / "Std.npy")
    ratio = std / staged
    assert np.all((ratio > 0.05) & (ratio < 5.0)), ratio[[0, 1, 3, 4, 67, 193, 259]]


def test_normalizer_round_trip_numpy_and_torch(clips):
    mean, std = N.compute_mean_std(clips)
    norm = N.Normalizer(mean, N.model_std(std))
    x = clips[1].astype(np.float32)
    z = norm.normalize(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(norm.denormalize(z), x, atol=1e-5)
    np.testing.assert_allclose(norm.normalize(mean[None]), 0.0, atol=1e-6)

    xt = torch.from_numpy(clips[2])[None]  # [1, T, 263] float64
    zt = norm.normalize(xt)
    assert isinstance(zt, torch.Tensor) and zt.dtype == torch.float64 and zt.shape == xt.shape
    np.testing.assert_allclose(zt[0].numpy(), (clips[2] - mean) / norm.std, rtol=1e-6)
    torch.testing.assert_close(norm.denormalize(zt), xt)
    with pytest.raises(ValueError, match="last dimension"):
        norm.normalize(np.zeros((3, 262)))


def test_normalizer_save_load(tmp_path: Path, clips):
    norm = N.Normalizer(*N.compute_mean_std(clips))
    target = tmp_path / "meta"
    norm.save(target)
    assert sorted(p.name for p in target.iterdir()) == ["mean.npy", "std.npy"]
    loaded = N.Normalizer.load(target)
    np.testing.assert_array_equal(loaded.mean, norm.mean)
    np.testing.assert_array_equal(loaded.std, norm.std)
    assert np.load(target / "std.npy").dtype == np.float32
    with pytest.raises(FileNotFoundError, match="std.npy"):
        (target / "std.npy").unlink()
        N.Normalizer.load(target)


def test_normalizer_rejects_bad_statistics():
    with pytest.raises(ValueError, match="strictly positive"):
        N.Normalizer(np.zeros(263), np.zeros(263))
    with pytest.raises(ValueError, match="1-D"):
        N.Normalizer(np.zeros(263), np.ones(262))
