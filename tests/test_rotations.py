"""Rotation maths: identities on random data, conventions, and torch == numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from safemotion.motion import rotations as rot
from safemotion.motion import rotations_torch as rott

ORDERS = ["".join(p) for p in itertools.permutations("XYZ")]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_quats(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rot.qnormalize(rng.normal(size=shape + (4,)))


def same_rotation(q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """|<q0, q1>| (1 when both represent the same rotation)."""
    return np.abs((rot.qnormalize(q0) * rot.qnormalize(q1)).sum(-1))


def elementary(axis: str, degrees: np.ndarray) -> np.ndarray:
    """Textbook rotation matrix about one axis (right-handed, column vectors)."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    one, zero = np.ones_like(c), np.zeros_like(c)
    rows = {
        "X": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        "Y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        "Z": [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return np.moveaxis(np.array(rows), (0, 1), (-2, -1))


def test_matrix_is_proper_rotation_and_matches_qrot(rng):
    q = random_quats(rng, 64)
    m = rot.quat_to_matrix(q)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)
    v = rng.normal(size=(64, 3))
    np.testing.assert_allclose(rot.qrot(q, v), (m @ v[..., None])[..., 0], atol=1e-12)


def test_quaternion_about_z_has_expected_matrix():
    q = rot.axis_angle_to_quat(np.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(rot.qrot(q, np.array([1.0, 0.0, 0.0])), [0.0, 1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(rot.quat_to_matrix(q), elementary("Z", np.array(90.0)), atol=1e-15)


def test_qmul_composes_and_qinv_inverts(rng):
    a, b = random_quats(rng, 32), random_quats(rng, 32)
    v = rng.normal(size=(32, 3))
    np.testing.assert_allclose(rot.qrot(rot.qmul(a, b), v), rot.qrot(a, rot.qrot(b, v)), atol=1e-12)
    np.testing.assert_allclose(rot.qmul(a, rot.qinv(a)), np.tile([1.0, 0, 0, 0], (32, 1)), atol=1e-12)
    np.testing.assert_allclose(rot.quat_to_matrix(rot.qmul(a, b)), rot.quat_to_matrix(a) @ rot.quat_to_matrix(b), atol=1e-12)


def test_broadcasting_over_leading_dims(rng):
    q = random_quats(rng, 5, 1)
    v = rng.normal(size=(1, 7, 3))
    assert rot.qrot(q, v).shape == (5, 7, 3)
    assert rot.qmul(q, random_quats(rng, 7)).shape == (5, 7, 4)
    assert rot.quat_to_matrix(random_quats(rng, 2, 3, 4)).shape == (2, 3, 4, 3, 3)


def test_matrix_quat_round_trip_including_half_turns(rng):
    q = random_quats(rng, 200)
    half_turns = np.concatenate([np.zeros((3, 1)), np.eye(3)], axis=1)  # 180° about x, y, z
    q = np.concatenate([q, half_turns, [[1.0, 0, 0, 0]]])
    back = rot.matrix_to_quat(rot.quat_to_matrix(q))
    np.testing.assert_allclose(same_rotation(back, q), 1.0, atol=1e-12)
    assert np.all(back[..., 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(back, axis=-1), 1.0, atol=1e-12)


def test_axis_angle_round_trips(rng):
    axis = rot.qnormalize(np.concatenate([np.zeros((100, 1)), rng.normal(size=(100, 3))], axis=1))[:, 1:]
    angle = rng.uniform(0.0, np.pi - 1e-6, size=(100, 1))
    angle[:3] = [[0.0], [1e-9], [1e-4]]
    aa = axis * angle
    np.testing.assert_allclose(rot.quat_to_axis_angle(rot.axis_angle_to_quat(aa)), aa, atol=1e-10)
    np.testing.assert_allclose(rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(aa)), aa, atol=1e-7)
    # Angles above pi come back as the equivalent rotation with angle in [0, pi].
    big = axis[:10] * 1.5 * np.pi
    back = rot.quat_to_axis_angle(rot.axis_angle_to_quat(big))
    np.testing.assert_allclose(np.linalg.norm(back, axis=-1), 0.5 * np.pi, atol=1e-12)
    np.testing.assert_allclose(rot.axis_angle_to_matrix(back), rot.axis_angle_to_matrix(big), atol=1e-12)


def test_axis_angle_matches_rodrigues(rng):
    aa = rng.normal(size=(20, 3))
    theta = np.linalg.norm(aa, axis=-1)[:, None, None]
    k = aa / np.linalg.norm(aa, axis=-1, keepdims=True)
    kx = np.zeros((20, 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    kx -= np.swapaxes(kx, 1, 2)
    expected = np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx
    np.testing.assert_allclose(rot.axis_angle_to_matrix(aa), expected, atol=1e-12)


def test_cont6d_round_trip_and_layout(rng):
    m = rot.quat_to_matrix(random_quats(rng, 50))
    d6 = rot.matrix_to_cont6d(m)
    np.testing.assert_array_equal(d6[:, :3], m[:, :, 0])
    np.testing.assert_array_equal(d6[:, 3:], m[:, :, 1])
    np.testing.assert_allclose(rot.cont6d_to_matrix(d6), m, atol=1e-12)
    # Gram-Schmidt makes any non-degenerate pair a rotation whose first column follows the first vector.
    noisy = rng.normal(size=(50, 6))
    r = rot.cont6d_to_matrix(noisy)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r[:, :, 0], noisy[:, :3] / np.linalg.norm(noisy[:, :3], axis=-1, keepdims=True), atol=1e-12)


def test_qbetween_maps_u_to_v_including_antiparallel(rng):
    u = rng.normal(size=(100, 3))
    v = rng.normal(size=(100, 3))
    v[:10] = -u[:10] * 2.5  # antiparallel
    v[10:13] = -np.eye(3)
    u[10:13] = np.eye(3)
    v[13:15] = u[13:15] * 0.3  # parallel
    q = rot.qbetween(u, v)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(rot.qrot(q, unit(u)), unit(v), atol=1e-9)
    np.testing.assert_allclose(same_rotation(q[13:15], np.array([1.0, 0, 0, 0])), 1.0, atol=1e-12)
    # Shortest arc: the rotation angle equals the angle between the vectors.
    cos_uv = np.clip((unit(u) * unit(v)).sum(-1), -1, 1)
    np.testing.assert_allclose(2 * np.arccos(np.clip(q[:, 0], -1, 1)), np.arccos(cos_uv), atol=1e-6)


def test_qbetween_antiparallel_horizontal_facing_is_a_yaw():
    q = rot.qbetween(np.array([0.0, 0.0, -1.0]), np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(np.abs(q), [0.0, 0.0, 1.0, 0.0], atol=1e-15)


@pytest.mark.parametrize("order", ORDERS)
def test_euler_to_matrix_composes_elementary_rotations(rng, order):
    angles = rng.uniform(-180, 180, size=(30, 3))
    expected = elementary(order[0], angles[:, 0]) @ elementary(order[1], angles[:, 1]) @ elementary(order[2], angles[:, 2])
    np.testing.assert_allclose(rot.euler_to_matrix(angles, order), expected, atol=1e-12)
    np.testing.assert_allclose(rot.euler_to_matrix(np.deg2rad(angles), order, degrees=False), expected, atol=1e-12)


@pytest.mark.parametrize("order", ORDERS)
def test_matrix_to_euler_round_trip_and_gimbal_lock(rng, order):
    angles = rng.uniform(-180, 180, size=(30, 3))
    angles[:, 1] /= 2.0  # middle angle within [-90, 90]: the decomposition is then unique
    m = rot.euler_to_matrix(angles, order)
    np.testing.assert_allclose(rot.matrix_to_euler(m, order), angles, atol=1e-8)
    locked = angles.copy()
    locked[:, 1] = np.where(np.arange(30) % 2 == 0, 90.0, -90.0)
    m_locked = rot.euler_to_matrix(locked, order)
    np.testing.assert_allclose(rot.euler_to_matrix(rot.matrix_to_euler(m_locked, order), order), m_locked, atol=1e-12)


def test_euler_rejects_bad_order():
    with pytest.raises(ValueError, match="ZXY"):
        rot.euler_to_matrix(np.zeros(3), "XXY")
    with pytest.raises(ValueError):
        rot.matrix_to_euler(np.eye(3), "zxy")


def test_slerp_endpoints_midpoint_and_shortest_path(rng):
    q0, q1 = random_quats(rng, 20), random_quats(rng, 20)
    np.testing.assert_allclose(same_rotation(rot.qslerp(q0, q1, 0.0), q0), 1.0, atol=1e-12)
    np.testing.assert_allclose(same_rotation(rot.qslerp(q0, q1, 1.0), q1), 1.0, atol=1e-12)
    # The midpoint splits the relative rotation into two equal halves.
    mid = rot.qslerp(q0, q1, 0.5)
    rel_first = rot.quat_to_axis_angle(rot.qmul(mid, rot.qinv(q0)))
    rel_second = rot.quat_to_axis_angle(rot.qmul(q1, rot.qinv(mid)))
    np.testing.assert_allclose(rel_first, rel_second, atol=1e-9)
    # Sign of q1 does not matter (shortest arc), and t broadcasts against a single pair.
    np.testing.assert_allclose(same_rotation(rot.qslerp(q0, -q1, 0.3), rot.qslerp(q0, q1, 0.3)), 1.0, atol=1e-12)
    path = rot.qslerp(q0[0], q1[0], np.linspace(0, 1, 11))
    assert path.shape == (11, 4)
    # Constant angular speed along the path.
    steps = 2 * np.arccos(np.clip(np.abs((path[1:] * path[:-1]).sum(-1)), -1, 1))
    np.testing.assert_allclose(steps, steps[0], atol=1e-9)


def test_slerp_of_identical_quaternions_is_stable():
    q = np.array([0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(rot.qslerp(q, q, 0.4), q, atol=1e-15)


def test_qcontinuous_removes_sign_flips(rng):
    smooth = rot.axis_angle_to_quat(np.linspace(0, 3 * np.pi, 40)[:, None, None] * np.array([[[0.0, 1.0, 0.0]]]))
    signs = rng.choice([-1.0, 1.0], size=(40, 1, 1))
    fixed = rot.qcontinuous(smooth * signs)
    assert np.all((fixed[1:] * fixed[:-1]).sum(-1) >= 0)
    np.testing.assert_allclose(np.abs(fixed), np.abs(smooth), atol=1e-15)
    np.testing.assert_allclose(fixed[0], (smooth * signs)[0])


def test_float32_input_stays_float32(rng):
    q = random_quats(rng, 4).astype(np.float32)
    assert rot.quat_to_matrix(q).dtype == np.float32
    assert rot.qrot(q, np.ones((4, 3), np.float32)).dtype == np.float32


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="last dimension 4"):
        rot.qmul(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 3\]"):
        rot.matrix_to_quat(np.zeros((3, 4)))


# --- torch equivalents --------------------------------------------------------------------------------------------


def test_torch_matches_numpy(rng):
    q = random_quats(rng, 3, 16)
    b = random_quats(rng, 3, 16)
    v = rng.normal(size=(3, 16, 3))
    aa = rng.normal(size=(3, 16, 3))
    m = rot.quat_to_matrix(q)
    d6 = rng.normal(size=(3, 16, 6))
    u = rng.normal(size=(3, 16, 3))
    u[0, :4] = -v[0, :4]
    t = torch.from_numpy
    pairs = [
        (rott.qmul(t(q), t(b)), rot.qmul(q, b)),
        (rott.qinv(t(q)), rot.qinv(q)),
        (rott.qrot(t(q), t(v)), rot.qrot(q, v)),
        (rott.quat_to_matrix(t(q)), rot.quat_to_matrix(q)),
        (rott.matrix_to_quat(t(m)), rot.matrix_to_quat(m)),
        (rott.axis_angle_to_matrix(t(aa)), rot.axis_angle_to_matrix(aa)),
        (rott.matrix_to_axis_angle(t(m)), rot.matrix_to_axis_angle(m)),
        (rott.matrix_to_cont6d(t(m)), rot.matrix_to_cont6d(m)),
        (rott.cont6d_to_matrix(t(d6)), rot.cont6d_to_matrix(d6)),
        (rott.qbetween(t(u), t(v)), rot.qbetween(u, v)),
    ]
    for got, expected in pairs:
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


def test_torch_broadcasting_and_gradients():
    q = torch.nn.functional.normalize(torch.randn(5, 1, 4, dtype=torch.float64), dim=-1)
    v = torch.randn(1, 7, 3, dtype=torch.float64)
    assert rott.qrot(q, v).shape == (5, 7, 3)
    aa = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    d6 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    loss = rott.axis_angle_to_matrix(aa).sum() + rott.cont6d_to_matrix(d6).square().sum()
    loss = loss + rott.matrix_to_axis_angle(rott.cont6d_to_matrix(d6)).sum()
    loss.backward()
    assert torch.isfinite(aa.grad).all() and torch.isfinite(d6.grad).all()
    assert torch.autograd.gradcheck(rott.axis_angle_to_matrix, (torch.randn(3, 3, dtype=torch.float64, requires_grad=True),))
    assert torch.autograd.gradcheck(rott.cont6d_to_matrix, (torch.randn(3, 6, dtype=torch.float64, requires_grad=True),))
